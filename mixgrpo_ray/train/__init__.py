"""``mixgrpo-ray train``: the training run.

The driver loop (sample, score, advantage, train, broadcast), its fault recovery, the run
directory and its checkpoints, resume, metric rows, preflight checks and the dry run.
"""
