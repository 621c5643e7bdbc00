"""The embedded tiny text-to-image model: its built-in task, the policy and its pre-training."""
