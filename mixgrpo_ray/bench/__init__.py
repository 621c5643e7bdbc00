"""``mixgrpo-ray bench``: side-by-side timings (end to end, per phase, weight-sync throughput).

``e2e`` is ``mixgrpo-ray bench``, ``phases`` is ``bench phases``, ``sync_throughput`` runs inside
``bench phases`` (``--sync-gb``); ``plain_loop`` is the no-Ray loop the pipeline is timed against.
"""
