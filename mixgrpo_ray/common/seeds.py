"""Every random stream of a run, derived from ``run.seed`` in one place.

Sampling is deterministic given these seeds and the weights, so a retried or resumed piece of
work reproduces the same numbers. Changing a formula here changes every seeded result.
"""

from __future__ import annotations

#: fixed noise seeds of held-out evaluation start here (one per ``data.eval_seeds``)
EVAL_SEED_BASE = 10_000
#: the seed of the first image of a training-progress grid
GRID_SEED = 1234


def rollout_seed(run_seed: int, iteration: int, call: int) -> int:
    """Noise of rollout call ``call`` (its prompts' share of the batch) in ``iteration``."""
    return int(run_seed) * 1_000_003 + int(iteration) * 1009 + int(call)


def update_assignment_seed(run_seed: int, iteration: int) -> int:
    """The permutation that cuts an iteration's samples into optimiser updates."""
    return int(run_seed) * 7 + int(iteration)


def window_seed(run_seed: int, iteration: int) -> int:
    """The start of a ``random`` window in ``iteration``."""
    return int(run_seed) * 1_000_003 + int(iteration)


def shuffle_seed(run_seed: int, epoch: int) -> int:
    """The order of the training prompts in ``epoch``."""
    return int(run_seed) * 7919 + int(epoch)


def eval_seeds(count: int) -> list[int]:
    """The fixed noise seeds of held-out evaluation."""
    return list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + int(count)))
