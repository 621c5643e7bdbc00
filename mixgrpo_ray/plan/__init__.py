"""``mixgrpo-ray plan``: per-role GPU memory of a config and the smallest learner count that fits
(``memory_plan``), a colocated hybrid worker's memory and sampling weights (``colocated_plan``),
seconds per iteration of both placements (``iteration_time``), the report the command prints
(``plan_report``), and which GPUs of a target cluster each actor would take, on paper
(``gpu_packing``, used by ``train --dry-run``)."""
