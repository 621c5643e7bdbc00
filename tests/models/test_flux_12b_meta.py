"""FLUX.1-dev's whole 12B transformer on the meta device (no memory): its parameter count is the
plan's 11.9 B, FSDP2 wraps one unit per block (57) plus the root, the LoRA targets are the layers
docs/models-and-rewards.md names, the weight-sync manifest in 256 MB bf16 buckets covers every
tensor once, and the sharded layout of 8 fsdp ranks (weight sync and DCP checkpoint) tiles every
tensor exactly, which is what ``consolidate`` reads back."""

import multiprocessing
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from mixgrpo_ray.algo import weight_buckets as wb
from mixgrpo_ray.config import resolve
from mixgrpo_ray.plan import memory_plan

#: FLUX.1-dev's published transformer/config.json, restated (not diffusers' defaults)
FLUX_DEV_CONFIG = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                       attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                       pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
ROOT = Path(__file__).resolve().parents[2]


def flux_dev_on_meta():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(**FLUX_DEV_CONFIG)


@pytest.fixture(scope="module")
def transformer():
    return flux_dev_on_meta()


def test_parameter_count_is_the_plans_11_9_billion(transformer):
    count = sum(p.numel() for p in transformer.parameters())
    size = memory_plan.model_size(resolve(["flux"], []))
    assert count == size.params and round(count / 1e9, 1) == 11.9
    assert size.blocks == 19 + 38 and size.hidden == 3072
    # the plan's figures in docs/scaling.md were printed from the same count
    assert f"transformer {count / 1e9:.3f} B parameters in 57 blocks" in (ROOT / "docs" / "scaling.md").read_text()


def test_lora_targets_are_the_documented_layers(transformer):
    from mixgrpo_ray.models.flux import lora

    adapted = {name for name, m in transformer.named_modules() if re.fullmatch(lora.LORA_TARGET_PATTERN, name)}
    double = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
              "attn.add_v_proj", "attn.to_add_out"]
    single = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"]
    expected = {f"transformer_blocks.{i}.{n}" for i in range(19) for n in double}
    expected |= {f"single_transformer_blocks.{i}.{n}" for i in range(38) for n in single}
    assert adapted == expected and len(adapted) == 19 * 8 + 38 * 5
    assert all(isinstance(transformer.get_submodule(n), torch.nn.Linear) for n in adapted)
    doc = (ROOT / "docs" / "models-and-rewards.md").read_text()
    for name in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                 "proj_mlp", "proj_out"):
        assert f"`{name}`" in doc, name
    lora.add_lora(transformer, rank=32)  # on the meta device: the adapters' shapes only
    params = sum(p.numel() for _, p in lora.lora_parameters(transformer))
    d, mlp = 3072, 4 * 3072  # rank r adds r (in + out) per adapted Linear
    per_double = 8 * 32 * (d + d)
    per_single = 3 * 32 * (d + d) + 32 * (d + mlp) + 32 * (d + mlp + d)
    assert params == 19 * per_double + 38 * per_single
    assert f"{params / 1e6:.1f} M" in doc  # the figure the docs give for rank 32
    assert all(not p.requires_grad for n, p in transformer.named_parameters() if "lora_" not in n)


def test_weight_sync_manifest_in_256_mb_bf16_buckets_covers_every_tensor_once(transformer):
    state = {k: v for k, v in flux_dev_on_meta().state_dict().items()}
    bucket = 256 * 2**20
    specs = wb.layout_buckets(wb.owned_slices(state, 0, 1), torch.bfloat16, bucket, 0)
    rows = defaultdict(list)
    for spec in specs:
        assert spec.dtype == "bfloat16"
        used = sum(p.numel for p in spec.pieces)
        assert used == spec.numel
        assert spec.nbytes <= bucket or len(spec.pieces) == 1  # one row larger than a bucket: alone
        for p in spec.pieces:
            rows[p.key].append((p.row_start, p.rows))
    assert set(rows) == set(state)
    for key, spans in rows.items():
        assert _rows_tile(spans, state[key].shape[0] if state[key].ndim else 1), key
    assert sum(s.nbytes for s in specs) == 2 * sum(v.numel() for v in state.values())
    assert len(specs) == pytest.approx(2 * 11.9e9 / bucket, abs=3)  # ~89 buckets of 256 MB


def _one_of_eight(rank, path):
    """One of 8 fsdp ranks, in a forked process of its own (a fake process group: no peers, no
    memory; a device mesh keeps the rank it was first made with): FSDP2 on the meta model, the
    rank's weight-sync slices and its DCP save plan, pickled to ``path``."""
    import pickle

    import torch.distributed as dist
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.fsdp import FSDPModule
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from mixgrpo_ray.algo.sharding import shard_module

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=8)
    tr = flux_dev_on_meta()
    blocks = shard_module(tr, torch.device("cpu"), 8)
    state = tr.state_dict()
    planner = DefaultSavePlanner()
    planner.set_up_planner({"model": state}, None, is_coordinator=rank == 0)
    out = {"units": [blocks, sum(isinstance(m, FSDPModule) for m in tr.modules()), isinstance(tr, FSDPModule)],
           "shapes": {k: list(v.shape) for k, v in state.items()},
           "sync": [[k, r0, (t.shape[0] if t.ndim else 1)] for k, _, r0, t in wb.owned_slices(state, rank, 8)],
           "plan": planner.create_local_plan()}
    dist.destroy_process_group()
    with open(path, "wb") as f:
        pickle.dump(out, f)


def _rows_tile(spans, total):
    """``spans`` ((first row, rows) pairs) cover rows ``[0, total)`` exactly once."""
    spans = sorted(spans)
    contiguous = all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
    return spans[0][0] == 0 and contiguous and spans[-1][0] + spans[-1][1] == total


def _tiles(size, chunks):
    """``chunks`` ([offsets, sizes]) cover a tensor of ``size`` exactly once."""
    covered = sum(torch.Size(s).numel() for _, s in chunks)
    rows = [(o[0], s[0]) for o, s in chunks] if size else [(0, 1)]
    whole = all(list(o[1:]) == [0] * (len(size) - 1) and list(s[1:]) == size[1:] for o, s in chunks)
    return covered == torch.Size(size).numel() and whole and _rows_tile(rows, size[0] if size else 1)


def test_eight_fsdp_ranks_shard_one_unit_per_block_and_tile_every_tensor(tmp_path):
    import pickle

    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    from mixgrpo_ray.common.sharded_checkpoint import MODEL_PREFIX

    fork = multiprocessing.get_context("fork")  # the children reuse this process's imports
    for rank in range(8):
        child = fork.Process(target=_one_of_eight, args=(rank, str(tmp_path / f"{rank}.pkl")))
        child.start()
        child.join(timeout=120)
        assert child.exitcode == 0, f"rank {rank}: exit code {child.exitcode}"
    ranks = [pickle.loads((tmp_path / f"{rank}.pkl").read_bytes()) for rank in range(8)]
    assert [r["units"] for r in ranks] == [[57, 58, True]] * 8  # 19 double + 38 single blocks, then the root
    shapes = ranks[0]["shapes"]
    assert all(r["shapes"] == shapes for r in ranks)
    # weight sync: the 8 ranks' owned rows of every tensor tile it exactly once
    spans = defaultdict(list)
    for key, row0, rows in (s for r in ranks for s in r["sync"]):
        spans[key].append((row0, rows))
    assert set(spans) == set(shapes)
    for key, rows in spans.items():
        assert _rows_tile(rows, shapes[key][0] if shapes[key] else 1), key
    # the DCP metadata of an 8-rank save: one "model.<name>" entry per weight, fp32, whose chunks
    # (one per rank holding rows) tile the full shape: what read_model_state/consolidate rebuild
    _, metadata = DefaultSavePlanner().create_global_plan([r["plan"] for r in ranks])
    dcp = {k: {"size": list(m.size), "dtype": str(m.properties.dtype),
               "chunks": [[list(c.offsets), list(c.sizes)] for c in m.chunks]}
           for k, m in metadata.state_dict_metadata.items()}
    assert set(dcp) == {MODEL_PREFIX + k for k in shapes}
    for key, m in dcp.items():
        assert m["size"] == shapes[key[len(MODEL_PREFIX):]] and m["dtype"] == "torch.float32", key
        assert _tiles(m["size"], m["chunks"]), key
        assert len(m["chunks"]) == (min(8, m["size"][0]) if m["size"] else 1), key
