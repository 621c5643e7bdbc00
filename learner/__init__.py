"""Learner actors and the learner group: GRPO updates on window steps, weight publishing."""
