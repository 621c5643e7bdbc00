"""Waiting on the calls of several actors when some of them may die or hang.

:func:`get_each` gathers results one by one, keeping the error of a call instead of raising it;
:func:`get_all_or_stop` waits for all calls of a group that must succeed together (the learner
ranks in a collective) and raises as soon as one of them fails, so a dead rank never leaves the
others waiting in an all-reduce.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

#: errors that mean the actor behind a call is gone (its process died, or it was killed)
ACTOR_GONE = (RayActorError,)


def _says(exc: BaseException, kinds: tuple) -> bool:
    """Whether ``exc``, or the cause a failed task re-raised it for, is one of ``kinds``."""
    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    return isinstance(exc, kinds) or isinstance(cause, kinds)


def actor_died(exc: BaseException) -> bool:
    """Whether ``exc`` (from ``ray.get``) says the actor that ran the call died."""
    return _says(exc, ACTOR_GONE)


def object_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says an object the call needed is gone with the process that owned it (e.g.
    weight buckets a learner rank published, after that rank's node died)."""
    return _says(exc, (ray.exceptions.ObjectLostError,))


def get_each(refs: Sequence[ray.ObjectRef], timeout_s: Optional[float] = None) -> list:
    """The result of each call, or the exception it raised (also on timeout: ``GetTimeoutError``)."""
    out = []
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for ref in refs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            out.append(ray.get(ref, timeout=left))
        except (GetTimeoutError, RayActorError, RayTaskError) as exc:
            out.append(exc)
    return out


def describe(error: BaseException) -> str:
    """One short line for an error of a remote call: its process died, or the last
    ``SomeError: message`` line of the remote traceback."""
    if actor_died(error):
        return "its process died"
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    causes = [ln for ln in lines if ln.split(":", 1)[0].endswith(("Error", "Exception"))]
    return (causes[-1] if causes else lines[0] if lines else type(error).__name__)[:300]


class GroupCallFailed(RuntimeError):
    """One call of a group that must succeed together failed; ``index`` says which."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(f"call {index} failed: {describe(error)}")
        self.index, self.error = index, error


def get_all_or_stop(refs: Sequence[ray.ObjectRef], poll_s: float = 0.5, settle_s: float = 2.0) -> list:
    """All results of ``refs``, in order; raises :class:`GroupCallFailed` as soon as any call has
    failed (within ``poll_s``), without waiting for the others to finish. Calls that fail within
    ``settle_s`` of the first are looked at too, and a call whose process died is named first (its
    peers fail only because it is gone)."""
    refs = list(refs)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s, fetch_local=False)
        failed = [(refs.index(r), e) for r, e in zip(ready, get_each(ready)) if isinstance(e, BaseException)]
        if failed:
            late, _ = ray.wait(pending, num_returns=len(pending), timeout=settle_s, fetch_local=False)
            failed += [(refs.index(r), e) for r, e in zip(late, get_each(late)) if isinstance(e, BaseException)]
            index, error = min(failed, key=lambda f: (not actor_died(f[1]), f[0]))
            raise GroupCallFailed(index, error) from error
    return ray.get(refs)
