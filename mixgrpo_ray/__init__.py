"""mixgrpo-ray: MixGRPO post-training of flow-matching text-to-image models on Ray.

Pure math lives in :mod:`mixgrpo_ray.sampling`, :mod:`mixgrpo_ray.window` and
:mod:`mixgrpo_ray.grpo` (no Ray imports); the policy interface in :mod:`mixgrpo_ray.policy`.
"""

__version__ = "0.1.0"
