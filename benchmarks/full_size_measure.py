"""Wall time and peak memory of a command's whole process tree (for the full-size benchmark).

The peak is the largest sum of resident set sizes over the process and all its descendants,
sampled every `interval` seconds (psutil); short spikes between two samples are missed, so the
figure is a lower bound of the true peak, within a fraction of a second of work.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

GIB = 2**30


def tree_rss(process: psutil.Process) -> int:
    """RSS in bytes of `process` and all its descendants (processes that vanish meanwhile count 0)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


@dataclass
class TreeSampler:
    """Samples the RSS of a process tree in a thread until `stop()`; keeps the peak and a timeline."""

    pid: int
    interval: float = 0.25
    peak: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            process = psutil.Process(self.pid)
        except psutil.Error:
            return
        last_kept = -1e9
        while not self._stop.is_set():
            try:
                rss = tree_rss(process)
            except psutil.Error:
                break
            self.peak = max(self.peak, rss)
            now = time.perf_counter() - self._started
            if now - last_kept >= 5.0:  # a coarse timeline: one point per 5 s
                self.timeline.append((round(now, 1), rss))
                last_kept = now
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Measured:
    """One measured command."""

    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_gib: float
    output_tail: str
    timeline_gib: list[tuple[float, float]]

    def to_dict(self) -> dict:
        return {
            "command": " ".join(self.command),
            "returncode": self.returncode,
            "wall_s": round(self.wall_s, 1),
            "peak_rss_gib": round(self.peak_rss_gib, 2),
            "output_tail": self.output_tail,
            "rss_timeline_gib": self.timeline_gib,
        }


def run_measured(command: list[str], log: Path, env: dict | None = None, timeout_s: float | None = None) -> Measured:
    """Run `command` to completion with its output in `log`; wall time and peak tree RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(process.pid)
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = process.wait()
        finally:
            sampler.stop()
    wall = time.perf_counter() - started
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    tail = "\n".join(line[-300:] for line in lines[-6:])
    timeline = [(t, round(rss / GIB, 2)) for t, rss in sampler.timeline]
    return Measured(command, returncode, wall, sampler.peak / GIB, tail, timeline)
