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


def actor_died(exc: BaseException) -> bool:
    """Whether ``exc`` (from ``ray.get``) says the actor that ran the call died."""
    if isinstance(exc, ACTOR_GONE):
        return True
    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    return isinstance(cause, ACTOR_GONE)


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


class GroupCallFailed(RuntimeError):
    """One call of a group that must succeed together failed; ``index`` says which."""

    def __init__(self, index: int, error: BaseException) -> None:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        super().__init__(f"call {index} failed: {first}")
        self.index, self.error = index, error


def get_all_or_stop(refs: Sequence[ray.ObjectRef], poll_s: float = 0.5) -> list:
    """All results of ``refs``, in order; raises :class:`GroupCallFailed` as soon as any call has
    failed (within ``poll_s``), without waiting for the others."""
    refs = list(refs)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s, fetch_local=False)
        for ref in ready:
            try:
                ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - any failure stops the group
                raise GroupCallFailed(refs.index(ref), exc) from exc
    return ray.get(refs)
