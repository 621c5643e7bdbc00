"""Small helpers every layer may use: statistics, seeds, dtype names, images and grids, checkpoint files. No Ray."""
