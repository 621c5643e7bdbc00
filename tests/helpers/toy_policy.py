"""A minimal Policy for unit tests of rollout/learner plumbing (not the product's tiny model)."""

from __future__ import annotations

import zlib

import torch

from mixgrpo_ray.models.policy import Policy


class ToyPolicy(Policy):
    """Velocity = small MLP of (x, sigma, prompt embedding); latents (4, 4, 4) -> 3x4x4 images."""

    name = "toy"

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(64, 8, generator=g)
        self.net = torch.nn.Sequential(torch.nn.Linear(64 + 1 + 8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 64))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def encode_prompts(self, prompts):
        ids = torch.tensor([zlib.crc32(p.encode()) % 64 for p in prompts])
        return {"emb": self.embed[ids]}

    def velocity(self, x, sigma, cond):
        h = torch.cat([x.reshape(x.shape[0], -1), sigma.reshape(-1, 1).float(), cond["emb"]], dim=1)
        return self.net(h).reshape(x.shape).float()

    def decode(self, x):
        return (x[:, :3].float().clamp(-1, 1) + 1) / 2

    def latent_shape(self):
        return (4, 4, 4)

    def trainable_parameters(self):
        return iter(self.net.parameters())

    def trainable_state_dict(self):
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_trainable_state_dict(self, state):
        self.net.load_state_dict(state)

    def train(self, mode=True):
        self.net.train(mode)
        return self
