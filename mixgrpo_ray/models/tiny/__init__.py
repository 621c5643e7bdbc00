"""The embedded tiny text-to-image model: its built-in tasks (shapes and pairs, named in
``mixgrpo_ray.models.tiny.tasks``) with their offline rewards, the policy and its pre-training."""
