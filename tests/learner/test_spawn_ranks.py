"""The gloo-rank spawner of the learner tests reruns ranks killed by a signal once, and fails at
once on a rank that raises or on a second signal death."""

import os
import signal

import pytest
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

from processes import spawn_ranks


def _aborts_first(rank, port, marker, always):
    assert isinstance(port, int) and port > 0
    if rank == 1 and (always or not os.path.exists(marker)):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGABRT)
    open(f"{marker}.{rank}", "w").close()


def _raises(rank, port, marker):
    open(f"{marker}.{rank}.{os.getpid()}", "w").close()
    raise ValueError("a real failure")


def test_signal_death_is_rerun_once(tmp_path, capfd):
    marker = str(tmp_path / "m")
    spawn_ranks(_aborts_first, 2, marker, False)
    assert os.path.exists(f"{marker}.0") and os.path.exists(f"{marker}.1")
    assert "running the 2 ranks again" in capfd.readouterr().err
    with pytest.raises(ProcessExitedException, match="SIGABRT"):
        spawn_ranks(_aborts_first, 2, str(tmp_path / "n"), True)


def test_raised_error_is_not_rerun(tmp_path):
    with pytest.raises(ProcessRaisedException, match="a real failure"):
        spawn_ranks(_raises, 1, str(tmp_path / "r"))
    assert len(list(tmp_path.iterdir())) == 1
