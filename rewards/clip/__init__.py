"""The CLIP towers the CLIP-family rewards (HPS v2.1, PickScore, CLIP score, ImageReward's
device and dtype choice) share: the preprocessing, the embedder built from a local checkpoint, and
the conversion of OpenCLIP weights to transformers' CLIP model.
"""
