"""mixgrpo-ray plan: the per-role memory table, the smallest learner count for full fine-tuning,
and train refusing a learner that cannot fit before any actor starts."""

import re

import pytest

from mixgrpo_ray.cli import main
from mixgrpo_ray.config import resolve
from mixgrpo_ray.plan import memory_plan as plan


def _gb(text, item):
    return float(re.search(rf"{re.escape(item)}\s+([\d.]+)", text).group(1))


def test_flux_full_fine_tuning_fits_eight_fsdp_learners(capsys):
    assert main(["plan", "--config", "flux", "--gpus-per-node", "8", "--gpu-memory-gb", "80"]) == 0
    out = capsys.readouterr().out
    size = plan.model_size(resolve(["flux"], []))
    assert 11.8e9 < size.params < 12.0e9 and size.blocks == 57 and size.tokens == 45 * 45 + 512
    # the formulas of mixgrpo_ray/plan/memory_plan.py: fp32 weights / 8 ranks, AdamW twice that
    assert _gb(out, "weights fp32 (shard)") == pytest.approx(4 * size.params / 8 / 1e9, abs=0.01)
    assert _gb(out, "AdamW state fp32 (shard)") == pytest.approx(8 * size.params / 8 / 1e9, abs=0.01)
    learner_total = float(re.search(r"learner rank \(fsdp, 8.*?total\s+([\d.]+)\s+fits", out, re.S).group(1))
    assert learner_total < 0.9 * 80
    assert "smallest learner count that fits is 4" in out
    # without sharding the same learner needs > 190 GB and does not fit
    assert main(["plan", "--config", "flux", "learner.strategy=replicate"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_tiny_sizes_are_counted_from_the_model():
    from mixgrpo_ray.models.tiny.model import TinyPolicy

    cfg = resolve(None, [])
    real = sum(p.numel() for p in TinyPolicy(seed=0).transformer.parameters())
    assert plan.model_size(cfg).params == real
    assert plan.check_learner_fits(cfg) is None  # no GPU asked for: nothing to check
    on = plan.activation_bytes(cfg, plan.model_size(cfg), True)
    assert on < plan.activation_bytes(cfg, plan.model_size(cfg), False)


def test_train_refuses_a_learner_that_cannot_fit(capsys):
    args = ["train", "--config", "flux", "learner.strategy=replicate", "learner.num_workers=1",
            "optim.samples_per_update=3"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "learner.gpu_memory_gb=80 allows 72.0 GB" in err and "learner.num_workers>=4" in err
    assert main(["plan", "--nodes", "0"]) == 2
