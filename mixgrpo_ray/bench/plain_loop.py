"""The same training iteration as the Ray pipeline, in one plain Python process (no Ray).

Same math, model, batch, seeds and update plan as :class:`~mixgrpo_ray.train.driver.Driver` with
one rollout actor: a sampling copy of the policy, the rewards in-process, advantages, the
learner's update, and the weights copied back to the sampler. The benchmark compares the
pipeline against it (what the actors, the object store and the driver cost on top), and with one
rollout actor the two produce the same metrics.
"""

from __future__ import annotations

import torch

from mixgrpo_ray.algo.advantages import batch_advantages
from mixgrpo_ray.algo.rollout import RolloutMeta, sample_groups
from mixgrpo_ray.algo.update import GRPOTrainer, update_assignment
from mixgrpo_ray.common.seeds import rollout_seed, update_assignment_seed
from mixgrpo_ray.config import Config
from mixgrpo_ray.core.window import SlidingWindow
from mixgrpo_ray.data.prompts import PromptSampler, load_prompts
from mixgrpo_ray.models.build import build_policy
from mixgrpo_ray.rewards.registry import build_reward
from mixgrpo_ray.train.metric_rows import iteration_row
from mixgrpo_ray.train.timing import PhaseTimer


class PlainLoop:
    """One process doing what the driver, a rollout actor, the reward pools and one learner do."""

    def __init__(self, cfg: Config) -> None:
        if cfg.learner.num_workers != 1:
            raise ValueError("the plain loop is one process: use learner.num_workers=1")
        self.cfg = cfg
        torch.set_num_threads(cfg.rollout.torch_threads)
        torch.manual_seed(cfg.run.seed)
        self.sampler_policy = build_policy(cfg.model, "cpu", trainable=False)
        self.sampler_policy.train(False)
        torch.manual_seed(cfg.run.seed)
        self.policy = build_policy(cfg.model, "cpu", trainable=True)
        self.trainer = GRPOTrainer(self.policy, cfg.optim, cfg.grpo.clip_range)
        self.rewards = {name: build_reward(rc.kind, **rc.options) for name, rc in cfg.rewards.items()}
        self.can_fail = {name: bool(model.can_fail) for name, model in self.rewards.items()}
        self.leave_out = {name: True for name in self.rewards}  # non-finite scores left out, as the driver does
        self.weights = {name: rc.weight for name, rc in cfg.rewards.items() if rc.weight > 0}
        self.window = SlidingWindow(num_steps=cfg.sampling.num_steps, seed=cfg.run.seed, **vars(cfg.window))
        self.prompts = PromptSampler(load_prompts(cfg.data.train), seed=cfg.run.seed, shuffle=cfg.data.shuffle)
        self.timer = PhaseTimer()
        self.iteration = 0
        self.sync()

    def sync(self) -> None:
        """The learner's weights into the sampling copy (the pipeline's broadcast)."""
        self.sampler_policy.load_trainable_state_dict(self.policy.trainable_state_dict())

    def run_iteration(self) -> dict:
        cfg, it = self.cfg, self.iteration + 1
        window = self.window.current()
        prompts = self.prompts.next_batch(cfg.data.prompts_per_iteration)
        self.timer.reset()
        with self.timer.phase("rollout"):
            out = sample_groups(self.sampler_policy, prompts, cfg.grpo.group_size, window, cfg.sampling, cfg.grpo,
                                seed=rollout_seed(cfg.run.seed, it, 0), version=it - 1)
        with self.timer.phase("reward"):
            flat = [p for p in prompts for _ in range(cfg.grpo.group_size)]
            scores = {name: model(out.images, flat) for name, model in self.rewards.items()}
        with self.timer.phase("train"):
            adv = batch_advantages(scores, self.weights, cfg.grpo, self.leave_out)
            plan = update_assignment(len(adv), cfg.optim.samples_per_update, 1, seed=update_assignment_seed(cfg.run.seed, it))
            stats = self.trainer.train_iteration(out.trajectory, adv, plan)
        with self.timer.phase("sync"):
            self.sync()
        self.window.step()
        self.iteration = it
        meta = RolloutMeta(worker=0, version=it - 1, nfe=out.nfe, num_images=int(out.images.shape[0]),
                           num_trained_steps=out.trajectory.num_trained_steps, time_s=self.timer.seconds["rollout"])
        start = window[0] if cfg.grpo.algorithm == "mixgrpo" else -1
        return iteration_row(it, start, it, [meta], scores, self.weights, self.can_fail, adv, stats, self.timer.seconds)
