"""`auto` overlap reads idle capacity now, not history (verify/pipeline/overlap.py idle_cpus): the last minute's
load average still counted a verify run that had just ended, so back-to-back exports on an idle machine ran
serially. /proc/stat's idle ticks over IDLE_SAMPLE_SECONDS are sampled instead; where it cannot be read, the
load average still decides."""

from __future__ import annotations

import os

import pytest

from verify.pipeline import overlap

LINE = "cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1 2\n"


@pytest.fixture
def stat(tmp_path, monkeypatch):
    """A /proc/stat that advances by the given ticks at each read."""
    path = tmp_path / "stat"
    monkeypatch.setattr(overlap, "PROC_STAT", path)
    monkeypatch.setattr(overlap, "IDLE_SAMPLE_SECONDS", 0.0)
    monkeypatch.setattr(overlap, "usable_cpus", lambda: 4)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    return path


def advancing(path, monkeypatch, busy: int, idle: int) -> None:
    readings = iter([(1000, 1000), (1000 + busy, 1000 + idle)])
    original = overlap._cpu_ticks

    def read():
        user, idle_ticks = next(readings)
        path.write_text(LINE.format(user=user, system=0, idle=idle_ticks // 2, iowait=idle_ticks - idle_ticks // 2))
        return original()
    monkeypatch.setattr(overlap, "_cpu_ticks", read)


@pytest.mark.parametrize("busy, idle, cores", [(0, 400, 4.0), (300, 100, 1.0), (400, 0, 0.0)])
def test_idle_cores_are_the_idle_share_of_the_sampled_ticks(stat, monkeypatch, busy, idle, cores):
    advancing(stat, monkeypatch, busy, idle)
    assert overlap.idle_cpus() == pytest.approx(cores)


def test_a_busy_minute_that_has_ended_does_not_stop_an_overlap(stat, monkeypatch):
    """The load average says every core was busy; the cores are idle now: the child may start."""
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 4.0, 4.0))
    monkeypatch.setenv(overlap.MODE_ENV, "auto")
    advancing(stat, monkeypatch, 0, 400)
    assert overlap.can_overlap(user_model=False)


def test_without_proc_stat_the_load_average_decides(stat, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 1.0, 1.0))
    assert not stat.exists()
    assert overlap.idle_cpus() == pytest.approx(4 - 3.5)
