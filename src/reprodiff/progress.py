"""Where a progress bar goes on a terminal: the study's bar on the first line, and the bars of each local-executor
worker (its training run, its sampling pass) on a line of their own below it (tqdm's ``position``, with one lock
shared by the processes), so that the bars of tasks running at once do not overwrite each other."""

from __future__ import annotations

from typing import Any

__all__ = ["bar_options", "set_worker_slot", "worker_slot"]

_SLOT = 0


def set_worker_slot(slot: int, lock: Any = None) -> None:
    """This process is worker ``slot`` (1, 2, ...) of the local executor; ``lock``: the study's tqdm lock."""
    global _SLOT
    _SLOT = slot
    if lock is not None:
        from tqdm.std import tqdm

        tqdm.set_lock(lock)


def worker_slot() -> int:
    """0 in the study process, 1 ... workers in the local executor's worker processes."""
    return _SLOT


def bar_options() -> dict[str, Any]:
    """tqdm keyword arguments for a bar of this process: its worker's own line, cleared when done."""
    return {} if _SLOT == 0 else {"position": _SLOT, "leave": False}
