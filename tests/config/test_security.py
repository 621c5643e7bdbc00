"""Security: the local cluster's dashboard listens on 127.0.0.1 only; the UnifiedReward API key
and endpoint can come from the environment, and a key never reaches config.yaml, --print-config,
logs or error messages."""

import pytest

from mixgrpo_ray.cli import train_cli
from mixgrpo_ray.config import resolve
from mixgrpo_ray.config.diff import check_resume_diff
from mixgrpo_ray.rewards.unified.unifiedreward import API_KEY_ENV, BASE_URL_ENV, UnifiedRewardReward

SECRET = "sk-test-0123456789abcdef"


def test_local_dashboard_binds_localhost(monkeypatch):
    import ray

    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise SystemExit(0)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit):
        train_cli.connect_ray(resolve(None, []))
    assert seen["address"] == "local" and seen["dashboard_host"] == "127.0.0.1"


def test_api_key_never_written_and_resume_takes_it_again(capsys):
    over = ["rewards.judge.kind=unifiedreward", "rewards.judge.weight=0", f"rewards.judge.options.api_key={SECRET}",
            "rewards.judge.options.base_url=http://judge:8000/v1"]
    cfg = resolve(None, over)
    assert cfg.rewards["judge"].options["api_key"] == SECRET  # the actors get it
    text = cfg.to_yaml()
    assert SECRET not in text and "<redacted>" in text
    assert train_cli.main(["--print-config", *over]) == 0
    assert SECRET not in capsys.readouterr().out
    # a run saved with the key redacted resumes with the key given again
    import yaml

    check_resume_diff(yaml.safe_load(text), cfg.to_dict(), "RUN")


def test_key_and_endpoint_from_environment(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, SECRET)
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:1/v1")
    reward = UnifiedRewardReward(backend="http", api_key="<redacted>")
    assert reward.judge.headers["Authorization"] == f"Bearer {SECRET}"
    assert reward.judge.url == "http://127.0.0.1:1/v1/chat/completions"
    monkeypatch.delenv(BASE_URL_ENV)
    with pytest.raises(ValueError, match=BASE_URL_ENV) as info:
        UnifiedRewardReward(backend="http")
    assert SECRET not in str(info.value)
