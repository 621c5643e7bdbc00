"""``mixgrpo-ray plan``: per-role GPU memory of a config and the smallest learner count that fits."""
