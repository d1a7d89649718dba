"""Computing store entries once when several runs share an output root.

Two runs over the same drop (a schedule that fires while the previous run is still going, two workers
given overlapping batches, a user's ``desra run`` beside the deployment) would otherwise compute the
same entries side by side. :func:`compute_missing` claims each entry (:meth:`pipeline.store.Store.claim`)
before computing it: entries another run is computing are put aside while this run does the rest, then
waited for; an entry that exists once its claim is held is taken from the store.
"""

from collections.abc import Callable, Iterable
from typing import TypeVar

from pipeline.store import Store

__all__ = ["compute_missing"]

Job = TypeVar("Job")


def compute_missing(store: Store, step: str, suffix: str, jobs: Iterable[Job], key: Callable[[Job], str],
                    work: Callable[[Job], None]) -> list[Job]:
    """Call ``work(job)`` for each job whose entry ``store.path(step, key(job), suffix)`` is missing,
    holding that entry's claim; returns the jobs whose entry another run finished meanwhile (the
    caller marks them as coming from the store). ``work`` reports its own failures."""
    deferred, found = [], []
    for job in jobs:
        with store.claim(step, key(job), blocking=False) as held:
            if not held:
                deferred.append(job)
            elif store.has(step, key(job), suffix):
                found.append(job)
            else:
                work(job)
    for job in deferred:
        with store.claim(step, key(job), blocking=True):
            if store.has(step, key(job), suffix):
                found.append(job)
            else:
                work(job)
    return found
