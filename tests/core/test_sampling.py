"""Sampling math against independent restatements of docs/algorithm.md §2–§6 and diffusers' scheduler."""

import math

import numpy as np
import pytest
import torch

from mixgrpo_ray.core.dpm_solver import DPMHistory, dpm_solver_step, ode_solve
from mixgrpo_ray.core.mixed_rollout import mixed_rollout, rollout_nfe
from mixgrpo_ray.core.schedule import flash_tail_sigmas, sigma_schedule
from mixgrpo_ray.core.steps import euler_step, sde_log_prob, sde_noise_scale, sde_step

T, SHIFT = 25, 3.0


def ref_sigmas(t=T, s=SHIFT):
    out = []
    for i in range(t + 1):
        u = 1 - i / t
        out.append(s * u / (1 + (s - 1) * u))
    return out


def toy_velocity(x, sigma):
    """A smooth, x- and sigma-dependent velocity field (no model needed)."""
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.sin(1.3 * x) * (0.5 + sig) - 0.7 * x + 0.2 * sig


# ---------------------------------------------------------------------------------------------
def test_sigma_schedule_values():
    sig = sigma_schedule(T, SHIFT)
    assert sig.dtype == torch.float32 and sig.shape == (T + 1,)
    np.testing.assert_allclose(sig.numpy(), ref_sigmas(), rtol=0, atol=1e-7)
    assert sig[0].item() == 1.0 and sig[-1].item() == 0.0
    # the values docs/algorithm.md §2 quotes
    for i, val in [(1, 0.9863), (2, 0.9718), (3, 0.9565), (4, 0.9403), (5, 0.9231), (23, 0.2069), (24, 0.1111)]:
        assert abs(sig[i].item() - val) < 6e-5
    assert torch.all(sig[1:] < sig[:-1])


def test_sigma_schedule_rejects_bad_args():
    with pytest.raises(ValueError):
        sigma_schedule(0, 3.0)
    with pytest.raises(ValueError):
        sigma_schedule(10, 0.0)


def test_euler_step_formula():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    out = euler_step(x, v, 0.8, 0.7)
    torch.testing.assert_close(out, x + (0.7 - 0.8) * v)
    sig = torch.tensor([0.9, 0.5, 0.3])
    nxt = torch.tensor([0.8, 0.4, 0.1])
    out = euler_step(x, v, sig, nxt)
    for b in range(3):
        torch.testing.assert_close(out[b], x[b] + (nxt[b] - sig[b]) * v[b])


def ref_sde(x, v, sigma, sigma_next, a, kind):
    """docs/algorithm.md eqs. (8)–(10), (13) restated for a scalar sigma, in float64."""
    x, v = x.double(), v.double()
    d = sigma_next - sigma
    if kind == "flow_grpo":
        g = a * math.sqrt(1 / (1 - sigma_next)) if sigma == 1 else a * math.sqrt(sigma / (1 - sigma))
    else:
        g = a
    mu = x + d * (v + g**2 / (2 * sigma) * (x + (1 - sigma) * v))
    std = g * math.sqrt(-d)
    return mu, std


def ref_logp(x_next, mu, std):
    x_next, mu = x_next.double(), mu.double()
    dens = -((x_next - mu) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return dens.reshape(dens.shape[0], -1).mean(1)


@pytest.mark.parametrize("kind,a", [("flow_grpo", 0.7), ("dance_grpo", 0.3)])
@pytest.mark.parametrize("i", [0, 1, 7, 22])
def test_sde_step_matches_restatement(kind, a, i):
    sig = ref_sigmas()
    g = torch.Generator().manual_seed(i)
    x, v, eps = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
    out = sde_step(x, v, sig[i], sig[i + 1], a, kind=kind, noise=eps)
    mu, std = ref_sde(x, v, sig[i], sig[i + 1], a, kind)
    torch.testing.assert_close(out.mean.double(), mu, atol=1e-5, rtol=1e-5)
    assert abs(float(out.std) - std) < 1e-6
    torch.testing.assert_close(out.x_next.double(), mu + std * eps.double(), atol=1e-5, rtol=1e-5)
    assert out.log_prob.shape == (4,) and out.log_prob.dtype == torch.float32
    torch.testing.assert_close(out.log_prob.double(), ref_logp(out.x_next, mu, std), atol=1e-4, rtol=1e-5)


def test_sde_noise_at_sigma_one_uses_sigma_next():
    sig = ref_sigmas()
    g = sde_noise_scale(1.0, sig[1], 0.7)
    assert abs(g - 0.7 * math.sqrt(1 / (1 - sig[1]))) < 1e-9
    gt = sde_noise_scale(torch.tensor([1.0, sig[3]]), torch.tensor([sig[1], sig[4]]), 0.7)
    assert torch.isfinite(gt).all()
    assert abs(gt[0].item() - g) < 1e-5
    assert abs(gt[1].item() - 0.7 * math.sqrt(sig[3] / (1 - sig[3]))) < 1e-5


def test_sde_step_per_sample_sigmas_equal_scalar_steps():
    sig = ref_sigmas()
    g = torch.Generator().manual_seed(3)
    x, v, eps = (torch.randn(3, 2, 4, generator=g) for _ in range(3))
    idx = [0, 5, 20]
    s = torch.tensor([sig[i] for i in idx])
    sn = torch.tensor([sig[i + 1] for i in idx])
    batched = sde_step(x, v, s, sn, 0.7, noise=eps)
    for b, i in enumerate(idx):
        single = sde_step(x[b : b + 1], v[b : b + 1], sig[i], sig[i + 1], 0.7, noise=eps[b : b + 1])
        torch.testing.assert_close(batched.x_next[b], single.x_next[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(batched.log_prob[b], single.log_prob[0], atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("kind,a,i", [("flow_grpo", 0.7, 0), ("flow_grpo", 0.7, 10), ("dance_grpo", 0.3, 24)])
def test_sde_samples_have_the_stated_mean_and_std(kind, a, i):
    sig = ref_sigmas()
    x = torch.full((1, 4), 0.5)
    v = torch.tensor([[0.3, -1.0, 2.0, 0.0]])
    n = 40000
    gen = torch.Generator().manual_seed(1)
    xs = x.expand(n, 4).contiguous()
    vs = v.expand(n, 4).contiguous()
    out = sde_step(xs, vs, sig[i], sig[i + 1], a, kind=kind, generator=gen)
    emp_mean = out.x_next.mean(0)
    emp_std = out.x_next.std(0)
    std = float(out.std)
    torch.testing.assert_close(emp_mean, out.mean[0], atol=5 * std / math.sqrt(n), rtol=0)
    assert torch.all((emp_std / std - 1).abs() < 0.03)


def test_sde_log_prob_reevaluates_the_recorded_transition():
    g = torch.Generator().manual_seed(5)
    x, v = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    out = sde_step(x, v, 0.6, 0.55, 0.7, generator=g)
    again = sde_log_prob(out.x_next, out.mean, out.std)
    torch.testing.assert_close(again, out.log_prob, rtol=0, atol=0)
    # a different mean gives a lower density for this sample on average
    assert (sde_log_prob(out.x_next, out.mean + 0.5, out.std) < out.log_prob).all()


# ---------------------------------------------------------------------------------------------
def ref_euler_solve(x, sigmas):
    for s, sn in zip(sigmas[:-1], sigmas[1:]):
        v = toy_velocity(x, torch.full((x.shape[0],), s))
        x = x + (sn - s) * v
    return x


def test_ode_solve_order1_is_euler():
    sig = ref_sigmas()
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    out = ode_solve(toy_velocity, x, torch.tensor(sig), order=1)
    torch.testing.assert_close(out, ref_euler_solve(x, sig), atol=1e-5, rtol=1e-5)


def test_dpm_first_order_equals_euler_algebraically():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for s, sn in [(1.0, 0.98), (0.8, 0.6), (0.3, 0.0)]:
        x0 = x - s * v
        torch.testing.assert_close(dpm_solver_step(x, x0, s, sn), x + (sn - s) * v, atol=1e-5, rtol=1e-5)


def diffusers_dpm2(x, sigmas, lower_order_final=True):
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=SHIFT,
        lower_order_final=lower_order_final,
    )
    n = len(sigmas) - 1
    sched.set_timesteps(n)
    sched.sigmas = torch.tensor(sigmas, dtype=torch.float32)
    sched.timesteps = (torch.tensor(sigmas[:-1]) * 1000).to(torch.int64)
    sched.set_begin_index(0)
    x = x.clone()
    for s in sigmas[:-1]:
        v = toy_velocity(x, torch.full((x.shape[0],), s))
        t = torch.tensor(s * 1000)
        x = sched.step(v, t, x).prev_sample
    return x


@pytest.mark.parametrize("grid", ["full", "tail"])
def test_ode_solve_order2_matches_diffusers(grid):
    if grid == "full":
        sig = ref_sigmas()
    else:  # a Flash tail sub-schedule that starts below 1
        sig = flash_tail_sigmas(T, SHIFT, 3, 0.4).tolist()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    ours = ode_solve(toy_velocity, x, torch.tensor(sig), order=2)
    ref = diffusers_dpm2(x, sig)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # and it is really second order, not Euler
    assert (ours - ref_euler_solve(x, sig)).abs().max() > 1e-4


def test_last_step_returns_x0_hat():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(4))
    hist = DPMHistory(x0_hat=torch.randn(3, 4), sigma=0.4)
    out = ode_solve(toy_velocity, x, torch.tensor([0.3, 0.0]), order=2, history=hist)
    torch.testing.assert_close(out, x - 0.3 * toy_velocity(x, torch.full((3,), 0.3)))


# ---------------------------------------------------------------------------------------------
def ref_tail_n(t, last, r):
    return int(max((t - last) * r, 1))


@pytest.mark.parametrize("start", [0, 5, 10, 19])
@pytest.mark.parametrize("r", [0.4, 0.2])
def test_flash_tail_sub_schedule(start, r):
    last = start + 3
    sub = flash_tail_sigmas(T, SHIFT, last, r)
    n = max(ref_tail_n(T, last, r), 2)
    assert len(sub) == n
    assert abs(sub[0].item() - ref_sigmas()[last + 1]) < 1e-6
    assert sub[-1].item() == 0.0
    u = np.linspace(1 - (last + 1) / T, 0, n)
    np.testing.assert_allclose(sub.numpy(), SHIFT * u / (1 + (SHIFT - 1) * u), atol=1e-6)


def counting(fn):
    calls = {"n": 0}

    def wrapped(x, s):
        calls["n"] += 1
        return fn(x, s)

    return wrapped, calls


@pytest.mark.parametrize(
    "start,r,expected",
    [(0, 0.4, 11), (0, 0.2, 7), (10, 0.4, 13 + 4), (19, 0.4, 22 + 2), (5, 0.2, 8 + 3)],
)
def test_flash_rollout_nfe(start, r, expected):
    # expected = L + n with L = start + 3, n = int((T - L) * r) (at least 2)
    assert expected == start + 3 + max(ref_tail_n(T, start + 3, r), 2)
    fn, calls = counting(toy_velocity)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    out = mixed_rollout(
        fn, x, sigma_schedule(T, SHIFT), range(start, start + 4), noise_level=0.7,
        tail="dpm2", tail_compression=r, generator=torch.Generator().manual_seed(1),
    )
    assert out.nfe == calls["n"] == expected
    assert rollout_nfe(T, range(start, start + 4), "dpm2", r) == expected


def test_mixed_rollout_euler_tail_restated():
    """Euler before the window, recorded SDE steps inside, Euler after (MixGRPO)."""
    sig = ref_sigmas()
    window = [6, 7, 8, 9]
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(7))
    fn, calls = counting(toy_velocity)
    out = mixed_rollout(fn, x, torch.tensor(sig), window, noise_level=0.7, generator=torch.Generator().manual_seed(11))
    assert out.nfe == calls["n"] == T
    assert [r.step for r in out.records] == window
    # replay with the recorded outputs as the realised noise
    ref = ref_euler_solve(x, sig[: window[0] + 1])
    for rec, i in zip(out.records, window):
        torch.testing.assert_close(rec.x, ref, atol=1e-5, rtol=1e-5)
        assert rec.sigma == pytest.approx(sig[i]) and rec.sigma_next == pytest.approx(sig[i + 1])
        v = toy_velocity(ref, torch.full((3,), sig[i]))
        mu, std = ref_sde(ref, v, sig[i], sig[i + 1], 0.7, "flow_grpo")
        torch.testing.assert_close(rec.log_prob.double(), ref_logp(rec.x_next, mu, std), atol=1e-4, rtol=1e-5)
        ref = rec.x_next
    final = ref_euler_solve(ref, sig[window[-1] + 1 :])
    torch.testing.assert_close(out.x, final, atol=1e-5, rtol=1e-5)


def test_mixed_rollout_dpm_tail_history_is_second_order_from_first_post_step():
    sig = ref_sigmas()
    window = [0, 1, 2, 3]
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(8))
    out = mixed_rollout(toy_velocity, x, torch.tensor(sig), window, noise_level=0.7,
                          tail="dpm2", tail_compression=0.4, generator=torch.Generator().manual_seed(9))
    # restated: the history holds x0_hat of step 3 (at sigma_3) when the tail starts at sigma_4
    last = out.records[-1]
    xl = last.x_next
    prev_x0 = last.x - sig[3] * toy_velocity(last.x, torch.full((2,), sig[3]))
    sub = flash_tail_sigmas(T, SHIFT, 3, 0.4).tolist()
    prev_s = sig[3]
    lam = lambda s: math.log((1 - s) / s)
    for s, sn in zip(sub[:-1], sub[1:]):
        v = toy_velocity(xl, torch.full((2,), s))
        x0 = xl - s * v
        if sn == 0:
            xl = x0
        else:
            h = lam(sn) - lam(s)
            r = (lam(s) - lam(prev_s)) / h
            D = x0 + (x0 - prev_x0) / (2 * r)
            xl = (sn / s) * xl + (1 - sn) * (1 - math.exp(-h)) * D
        prev_x0, prev_s = x0, s
    torch.testing.assert_close(out.x, xl, atol=1e-5, rtol=1e-5)


def test_dance_rollout_sde_everywhere_decodes_x0_hat():
    sig = torch.tensor(ref_sigmas())
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    out = mixed_rollout(toy_velocity, x, sig, range(T), noise_level=0.3, sde_kind="dance_grpo",
                          generator=torch.Generator().manual_seed(2))
    assert out.nfe == T and len(out.records) == T
    last = out.records[-1]
    torch.testing.assert_close(out.x, last.x - sig[-2] * toy_velocity(last.x, torch.full((2,), sig[-2].item())))


def test_mixed_rollout_rejects_bad_windows():
    sig = sigma_schedule(T, SHIFT)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="consecutive"):
        mixed_rollout(toy_velocity, x, sig, [1, 3], noise_level=0.7)
    with pytest.raises(ValueError, match="outside"):
        mixed_rollout(toy_velocity, x, sig, [24, 25], noise_level=0.7)
    with pytest.raises(ValueError, match="tail_compression"):
        mixed_rollout(toy_velocity, x, sig, [0], noise_level=0.7, tail="dpm2")
