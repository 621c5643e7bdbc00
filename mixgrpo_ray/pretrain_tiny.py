"""The job behind ``mixgrpo-ray pretrain-tiny`` (command line: :mod:`mixgrpo_ray.cli.pretrain_tiny_cli`):
pre-train the embedded tiny model on a built-in task (``--task``: ``shapes``, the default, or
``pairs``; :mod:`mixgrpo_ray.models.tiny.tasks`), whose grammar gives the model its vocabulary.

Flow matching on the task's *train* combinations: for a clean image ``x0`` (in ``[-1, 1]``),
noise ``n`` and ``sigma = S(u)``, ``u ~ U(0, 1)`` (the sampling time shift ``S``, shift 3 by
default, so training sees noise levels as often as sampling visits them),
``x_t = (1 - sigma) x0 + sigma n`` and the target velocity is ``v = n - x0``. The policy's
velocity is ``(x_t - x0_hat) / sigma``, so the squared velocity error is
``|x0_hat - x0|^2 / sigma^2``; the weight ``1 / sigma^2`` is capped at ``1 / weight_floor^2`` so
that a rare tiny sigma does not blow up a step. Text encoder and transformer train jointly
(AdamW, linear warm-up, cosine decay). Seeded and reproducible on a fixed thread count.
``--position-init`` is the initial scale of the text encoder's word-position embeddings: at the
default 0.02 the encoder starts nearly blind to word order, which the shapes task does not need;
pairs prompts differ only in word order ("a red circle left of a blue square" vs "a blue square
left of a red circle"), and the shipped pairs model was made with 1.

Held-out scores are the task's offline rewards
(:func:`mixgrpo_ray.eval.tiny_scores.score_images`) of 25-step Euler samples of the first
``--eval-prompts`` held-out prompts; the final evaluation also scores, for reference, the same
random initialisation before training and jittered ground-truth renders of those prompts.

Writes ``config.json`` (architecture, these options, the held-out scores) and
``model.safetensors`` into ``--out``. The shipped models in ``mixgrpo_ray/models/tiny/assets`` (shapes)
and ``pairs_assets`` (pairs) were made with the options recorded in their ``config.json``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

#: the command recorded in the written config.json
COMMAND = "mixgrpo-ray pretrain-tiny"


class DivergedError(RuntimeError):
    """The loss stopped being a finite number."""


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up to ``lr`` then cosine decay to 10 % of it at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def flow_matching_loss(policy, prompts, images_uint8, generator, sigma_shift, weight_floor) -> torch.Tensor:
    """The capped-weight flow-matching loss of one batch (see the module docstring)."""
    from mixgrpo_ray.core.schedule import shift_time

    x0 = images_uint8.float() / 127.5 - 1.0
    batch = x0.shape[0]
    sigma = shift_time(torch.rand(batch, generator=generator), sigma_shift).float()
    noise = torch.randn(x0.shape, generator=generator)
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    cond = policy.encode_with_grad(prompts)
    x0_hat = policy.predict_x0(x_t, sigma, cond)
    weight = 1.0 / sigma.clamp(min=weight_floor).square()
    return (weight * (x0_hat - x0).square().mean(dim=(1, 2, 3))).mean()


def _rounded(scores: dict) -> dict[str, list[float]]:
    return {k: [round(v[0], 4), round(v[1], 4)] for k, v in scores.items()}


def evaluate(policy, n_prompts: int, seed: int = 0, task: str = "shapes") -> dict[str, list[float]]:
    """Held-out ``{reward: [mean, sem]}`` of 25-step Euler (shift 3) samples of the first
    ``n_prompts`` held-out prompts of ``task``."""
    from mixgrpo_ray.models.tiny.tasks import get_task
    from mixgrpo_ray.eval.tiny_scores import sample_prompts, score_images

    prompts = get_task(task).load().eval_prompts()[:n_prompts]
    policy.transformer.eval()
    policy.text_encoder.eval()
    images = sample_prompts(policy, prompts, seed=seed)
    return _rounded(score_images(images, prompts, task))


def ground_truth_scores(n_prompts: int, seed: int = 0, task: str = "shapes") -> dict[str, list[float]]:
    """Held-out ``{reward: [mean, sem]}`` of jittered ground-truth renders (seeded by ``seed``) of
    the first ``n_prompts`` held-out prompts of ``task``: the scores' ceiling."""
    from mixgrpo_ray.models.tiny.tasks import get_task
    from mixgrpo_ray.eval.tiny_scores import score_images

    module = get_task(task).load()
    prompts = module.eval_prompts()[:n_prompts]
    images = module.render(list(module.eval_attributes()[:n_prompts]), generator=torch.Generator().manual_seed(seed))
    return _rounded(score_images(images, prompts, task))


def pretrain(args: argparse.Namespace) -> tuple[Path, float, float, dict]:
    """Pre-train with the command's options ``args`` and write ``args.out``; returns the written
    folder, the final smoothed loss, the training seconds and the final held-out scores, with the
    reference scores under ``"random_init"`` and ``"ground_truth"`` (raises
    :class:`DivergedError` when the loss is not finite)."""
    from tqdm import tqdm

    from mixgrpo_ray.models.tiny.model import TinyConfig, TinyPolicy
    from mixgrpo_ray.models.tiny.tasks import get_task

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = get_task(args.task).load()
    config = TinyConfig(task=args.task, position_init=args.position_init)
    policy = TinyPolicy(config, seed=args.seed)
    policy.text_encoder.requires_grad_(True)
    params = list(policy.text_encoder.parameters()) + list(policy.transformer.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    history: list[dict] = []
    start = time.perf_counter()
    ema_loss = None
    bar = tqdm(range(args.steps), desc="pretrain-tiny", disable=args.quiet, dynamic_ncols=True)
    for step in bar:
        policy.transformer.train()
        policy.text_encoder.train()
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args)
        prompts, images = task.sample_scenes(args.batch_size, data_gen, split="train")
        loss = flow_matching_loss(policy, prompts, images, data_gen, args.sigma_shift, args.weight_floor)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergedError(f"loss became {value} at step {step}")
        ema_loss = value if ema_loss is None else 0.98 * ema_loss + 0.02 * value
        bar.set_postfix(loss=f"{ema_loss:.4f}")
        done = step + 1
        if not args.no_eval and args.eval_every and done % args.eval_every == 0 and done < args.steps:
            scores = evaluate(policy, args.eval_prompts, task=args.task)
            history.append({"step": done, "loss": round(ema_loss, 5), **scores})
            bar.write(f"step {done}: loss {ema_loss:.4f} {scores}")
    train_seconds = time.perf_counter() - start
    final: dict = {"step": args.steps, "loss": round(ema_loss, 5)}
    reference: dict = {}
    if not args.no_eval:
        final.update(evaluate(policy, args.eval_prompts, task=args.task))
        reference = {
            "random_init": evaluate(TinyPolicy(config, seed=args.seed), args.eval_prompts, task=args.task),
            "ground_truth": ground_truth_scores(args.eval_prompts, task=args.task),
        }
    history.append(final)

    policy.text_encoder.requires_grad_(False).eval()
    policy.transformer.eval()
    options = {k: v for k, v in vars(args).items() if k not in ("out", "quiet")}
    out = policy.save_pretrained(
        args.out,
        extra={
            "pretraining": {
                "command": COMMAND + " " + " ".join(
                    f"--{k.replace('_', '-')} {v}" for k, v in options.items() if not isinstance(v, bool)
                ) + "".join(f" --{k.replace('_', '-')}" for k, v in options.items() if v is True),
                "options": options,
                "train_seconds": round(train_seconds, 1),
                "torch": torch.__version__,
                "held_out": history,
                **({"held_out_reference": reference} if reference else {}),
            }
        },
    )
    return out, ema_loss, train_seconds, {**final, **reference}
