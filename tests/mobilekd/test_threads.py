"""--threads 0: as many threads as there are idle cores when the run starts (mobilekd.threads)."""

import torch

from mobilekd import threads


def test_auto_threads_counts_idle_cores(monkeypatch):
    samples = iter([[(0, 0), (0, 0)], [(100, 100), (0, 100)]])  # cpu0 idle the whole sample, cpu1 busy
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads.auto_threads() == 1


def test_auto_threads_on_a_quiet_machine_uses_every_core(monkeypatch):
    samples = iter([[(0, 0), (0, 0)], [(95, 100), (99, 100)]])
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads.auto_threads() == 2


def test_never_zero_threads_and_explicit_count_wins(monkeypatch):
    samples = iter([[(0, 0), (0, 0)], [(0, 100), (0, 100)]])  # every core busy
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads.auto_threads() == 1
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
