"""Store claims between real processes (multiprocessing, spawn): one holder at a time, none left by a
killed holder, and a non-blocking try that reports a busy claim."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

import desra.pipeline.store
from desra.pipeline.store import Store

SPAWN = mp.get_context("spawn")
STEP, KEY = "sr", "ab" * 32
WAIT = 30.0  # seconds a spawned child may take to start (imports cv2 and numpy)


def _hold_until_told(root: str, held, release) -> None:
    """Child: take the claim (blocking), say so, keep it until ``release`` is set (or forever)."""
    with Store(root).claim(STEP, KEY, blocking=True) as got:
        assert got
        held.set()
        release.wait(120)


def _try_once(root: str, answer) -> None:
    """Child: one non-blocking try; puts whether it got the claim."""
    with Store(root).claim(STEP, KEY, blocking=False) as got:
        answer.put(got)


def _wait_then_mark(root: str, got_it) -> None:
    """Child: a blocking claim; sets ``got_it`` once it holds it."""
    with Store(root).claim(STEP, KEY, blocking=True) as got:
        assert got
        got_it.set()


def _increment(root: str, log: str, rounds: int) -> None:
    """Child: ``rounds`` read-modify-write increments of a counter file, each under the claim, logging
    enter/exit times so the parent can check that no two holders overlapped."""
    counter = Path(root) / "counter"
    for _ in range(rounds):
        with Store(root).claim(STEP, KEY, blocking=True):
            start = time.monotonic()
            value = int(counter.read_text()) if counter.exists() else 0
            time.sleep(0.01)  # widen the race window a lost update would need
            counter.write_text(str(value + 1))
            with open(log, "a") as fh:
                fh.write(f"{start} {time.monotonic()}\n")


def _start(target, *args):
    proc = SPAWN.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _stop(proc) -> None:
    if proc.is_alive():
        proc.kill()
    proc.join(10)


def test_only_one_process_holds_a_claim_at_a_time(tmp_path):
    root, log = tmp_path / "out", tmp_path / "intervals.log"
    procs = [_start(_increment, str(root), str(log), 10) for _ in range(3)]
    try:
        for proc in procs:
            proc.join(120)
            assert proc.exitcode == 0, f"child exited with {proc.exitcode}"
    finally:
        for proc in procs:
            _stop(proc)
    assert (root / "counter").read_text() == "30"  # no lost update
    intervals = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(intervals) == 30
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert start >= end, f"two holders overlapped: one ended at {end}, the next began at {start}"
    assert Store(root).lock_path(STEP, KEY).is_file()  # the lock file stays (it is never deleted)


def test_a_blocking_claim_waits_for_the_holder_and_a_non_blocking_try_reports_busy(tmp_path):
    root = str(tmp_path / "out")
    held, release, got_it = SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    answers = SPAWN.Queue()
    holder = _start(_hold_until_told, root, held, release)
    waiter = None
    try:
        assert held.wait(WAIT), "the holder never got the claim"
        with Store(root).claim(STEP, KEY, blocking=False) as got:  # this process, too, is told it is busy
            assert got is False
        prober = _start(_try_once, root, answers)
        assert answers.get(timeout=WAIT) is False
        prober.join(10)
        waiter = _start(_wait_then_mark, root, got_it)
        assert not got_it.wait(2.0), "a blocking claim went through while another process held it"
        release.set()
        assert got_it.wait(WAIT), "the blocking claim never went through after the holder released it"
        holder.join(10)
        prober = _start(_try_once, root, answers)
        assert answers.get(timeout=WAIT) is True
        prober.join(10)
    finally:
        release.set()
        for proc in (holder, waiter):
            if proc is not None:
                _stop(proc)


def test_a_sigkilled_holder_leaves_no_stale_claim(tmp_path):
    root = str(tmp_path / "out")
    held, never = SPAWN.Event(), SPAWN.Event()
    holder = _start(_hold_until_told, root, held, never)
    try:
        assert held.wait(WAIT), "the holder never got the claim"
        with Store(root).claim(STEP, KEY, blocking=False) as got:
            assert got is False
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        assert holder.exitcode == -signal.SIGKILL
    finally:
        _stop(holder)
    deadline = time.monotonic() + 10  # the kernel drops the lock as the process's files close
    while True:
        with Store(root).claim(STEP, KEY, blocking=False) as got:
            if got:
                break
        assert time.monotonic() < deadline, "the claim of a SIGKILLed process was never released"
        time.sleep(0.05)
    with Store(root).claim(STEP, KEY, blocking=True) as got:
        assert got is True


def test_claims_are_per_entry_and_released_on_an_exception(tmp_path):
    store = Store(tmp_path / "out")
    with store.claim(STEP, KEY, blocking=True) as first:
        assert first is True
        with store.claim(STEP, "cd" * 32, blocking=False) as other, store.claim("detect", KEY, blocking=False) as step:
            assert other is True and step is True  # other keys and other steps are free
    with pytest.raises(RuntimeError), store.claim(STEP, KEY, blocking=True):
        raise RuntimeError("boom")
    with store.claim(STEP, KEY, blocking=False) as again:
        assert again is True
    assert store.lock_path(STEP, KEY) == tmp_path / "out" / ".desra" / "locks" / STEP / f"{KEY}.lock"


@pytest.mark.parametrize(("step", "key"), [("sr", "../escape"), ("sr/x", KEY), ("sr", ""), ("..", KEY)])
def test_a_key_that_would_leave_the_locks_folder_is_refused(tmp_path, step, key):
    with pytest.raises(ValueError, match="without path separators"):
        Store(tmp_path).lock_path(step, key)


def test_without_fcntl_a_claim_warns_and_excludes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(desra.pipeline.store, "fcntl", None)
    with pytest.warns(RuntimeWarning, match="fcntl is not available"), \
            Store(tmp_path).claim(STEP, KEY, blocking=False) as got:
        assert got is True
