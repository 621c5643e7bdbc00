"""UnifiedReward: a vision-language judge asked to score an image against its prompt, over an
OpenAI-compatible HTTP endpoint (``unified_http``) or a local Qwen-VL checkpoint
(``unified_local``), with the question and answer parsing both share (``unified_prompts``).
"""
