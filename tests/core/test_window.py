"""The sliding window (docs/algorithm.md §7, eqs. (24)–(28)) over 600 iterations, against restated
position formulas."""

import math

import pytest

from mixgrpo_ray.core.window import SlidingWindow

T = 25


def run(win, n=600):
    starts = []
    for _ in range(n):
        cur = win.current()
        assert cur == list(range(cur[0], cur[0] + win.size))
        assert cur[-1] <= T - 3  # the last two steps are never trained
        starts.append(cur[0])
        win.step()
    return starts


def ref_progressive(n, tau_of, stride, max_start, at_end):
    starts, l, since = [], 0, 0
    for _ in range(n):
        starts.append(l)
        since += 1
        if since >= tau_of(l):
            since = 0
            l += stride
            if l > max_start:
                l = 0 if at_end == "rollback" else max_start
    return starts


def test_progressive_constant_rollback():
    starts = run(SlidingWindow(size=4, shift_interval=25, stride=1))
    # iteration k uses start (k // 25) mod 20: 0..19 are the valid starts for w = 4, T = 25
    assert starts == [(k // 25) % 20 for k in range(600)]
    assert max(starts) == 19


def test_progressive_park_at_end():
    starts = run(SlidingWindow(size=4, shift_interval=20, at_end="park"))
    assert starts == [min(k // 20, 19) for k in range(600)]


def test_progressive_stride_two():
    starts = run(SlidingWindow(size=4, shift_interval=10, stride=2))
    assert starts == ref_progressive(600, lambda l: 10, 2, 19, "rollback")
    assert set(starts) == set(range(0, 20, 2))


def test_exp_decay_interval():
    win = SlidingWindow(size=4, shift_interval=25, interval_schedule="exp_decay", at_end="park")
    tau = lambda l: math.ceil(25 * math.exp(-0.1 * max(0, l - 13)))
    for l in range(20):
        assert win.interval(l) == tau(l)
    assert win.interval(13) == 25 and win.interval(19) == math.ceil(25 * math.exp(-0.6))
    assert run(win) == ref_progressive(600, tau, 1, 19, "park")


def test_linear_decay_interval():
    win = SlidingWindow(size=4, shift_interval=25, interval_schedule="linear_decay", min_shift_interval=5)
    tau = lambda l: max(5, int(25 * (1 - l / 23) + 5 * l / 23))
    for l in range(20):
        assert win.interval(l) == tau(l)
    assert win.interval(0) == 25 and win.interval(19) < 25
    assert run(win) == ref_progressive(600, tau, 1, 19, "rollback")


def test_frozen():
    assert set(run(SlidingWindow(strategy="frozen"))) == {0}
    assert set(run(SlidingWindow(strategy="frozen", initial_start=3))) == {3}


def test_random_uniform_and_seeded():
    a = run(SlidingWindow(strategy="random", seed=7))
    b = run(SlidingWindow(strategy="random", seed=7))
    c = run(SlidingWindow(strategy="random", seed=8))
    assert a == b and a != c
    assert set(a) == set(range(20))  # U{0..T-2-w}, all hit in 600 draws
    counts = [a.count(i) for i in range(20)]
    assert max(counts) < 3 * 30 and min(counts) > 30 / 3


@pytest.mark.parametrize("strategy", ["progressive", "random"])
def test_state_dict_resume(strategy):
    full = SlidingWindow(strategy=strategy, shift_interval=7, seed=3)
    ref = run(full, 100)
    first = SlidingWindow(strategy=strategy, shift_interval=7, seed=3)
    head = run(first, 43)
    state = first.state_dict()
    resumed = SlidingWindow(strategy=strategy, shift_interval=7, seed=3)
    resumed.load_state_dict(state)
    assert head + run(resumed, 57) == ref


def test_invalid_configs():
    with pytest.raises(ValueError, match="does not fit"):
        SlidingWindow(size=24, num_steps=25)
    with pytest.raises(ValueError, match="strategy"):
        SlidingWindow(strategy="sideways")
    with pytest.raises(ValueError, match="interval schedule"):
        SlidingWindow(interval_schedule="cosine")
    with pytest.raises(ValueError):
        SlidingWindow(shift_interval=0)
