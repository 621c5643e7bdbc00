"""FLUX.1 behind the Policy interface: diffusers components, cached prompt encodings, optional LoRA."""
