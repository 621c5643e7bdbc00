"""Prompt sources and the resumable sampler."""

import pytest

from mixgrpo_ray.data.prompts import PromptSampler, load_prompts


def test_builtin_sets_and_limit():
    train, ev = load_prompts("tiny:train"), load_prompts("tiny:eval")
    assert train and ev and not set(train) & set(ev)
    assert load_prompts("tiny:eval:5") == ev[:5]
    with pytest.raises(ValueError, match="tiny:train or tiny:eval"):
        load_prompts("tiny:test")


def test_sampler_epochs_and_resume():
    s = PromptSampler(list("abcdefg"), seed=1)
    first = s.next_batch(5) + s.next_batch(5)
    assert sorted(first[:7]) == list("abcdefg")  # a full epoch before repeating
    t = PromptSampler(list("abcdefg"), seed=1)
    t.next_batch(5)
    state = t.state_dict()
    u = PromptSampler(list("abcdefg"), seed=1)
    u.load_state_dict(state)
    assert u.next_batch(5) == first[5:]
    with pytest.raises(ValueError):
        PromptSampler([])
