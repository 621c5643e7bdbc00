"""Qwen-Image (a ``QwenImagePipeline`` folder) as an RL policy: ``model.kind: qwen_image``."""
