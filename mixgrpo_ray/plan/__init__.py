"""``mixgrpo-ray plan``: per-role GPU memory of a config and the smallest learner count that fits
(``memory_plan``); which GPUs of a target cluster each actor would take, on paper
(``gpu_packing``, used by ``train --dry-run``)."""
