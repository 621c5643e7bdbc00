"""``mixgrpo-ray eval``: score a checkpoint on held-out prompts with every configured reward."""
