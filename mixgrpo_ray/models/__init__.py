"""Policies and reward interfaces: the ``Policy`` adapter, the ``RewardModel`` plug-in base, FLUX.1 (``flux``) and the embedded tiny model with its task and offline rewards (``tiny``)."""
