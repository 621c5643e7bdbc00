"""``mixgrpo-ray study``: train a grid of configurations x seeds and report held-out gains."""
