"""Stable Diffusion 3 / 3.5 (diffusers ``StableDiffusion3Pipeline`` folders) as a policy."""
