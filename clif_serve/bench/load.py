"""A closed-loop gRPC load generator: N clients, each sending its next request when the last returns.

It stands in for perf_analyzer, which the tritonclient wheel does not ship. Every run is bounded
both in request count and in time, and talks to one server URL (loopback in the suite).

A closed loop's plain throughput (completed / wall time) counts the drain at the end, when clients
that finished leave the others fewer batch-mates; in a short run that tail weighs a lot and differs
run to run. `steady_throughput` leaves it out: by Little's law a closed loop of N clients with no
think time completes N / mean latency requests per second, taken over the requests that finished
while every client was still sending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from clif_serve.bench.stats import LatencySummary
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient

RequestFactory = Callable[[int, int], GenerationRequest]  # (client index, request index) -> request


@dataclass
class LoadResult:
    """What a load run measured: per-request latencies (ms), failures and the wall time."""

    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    # Seconds from the start: when each completed request finished, and when the first client stopped.
    finished_s: list[float] = field(default_factory=list)
    first_client_done_s: float | None = None

    @property
    def throughput(self) -> float:
        """Completed requests per second over the run."""
        return len(self.latencies_ms) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def steady_throughput(self) -> float:
        """Requests per second while all clients were sending (Little's law, see the module docstring)."""
        end = self.first_client_done_s if self.first_client_done_s is not None else self.wall_s
        steady = [ms for ms, at in zip(self.latencies_ms, self.finished_s, strict=True) if at <= end]
        return self.concurrency * 1000 / (sum(steady) / len(steady)) if steady else 0.0

    def to_dict(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "completed": len(self.latencies_ms),
            "failed": len(self.failures),
            "failures": self.failures[:5],
            "wall_s": self.wall_s,
            "throughput_rps": self.throughput,
            "steady_throughput_rps": self.steady_throughput,
            "latency_ms": LatencySummary.of(self.latencies_ms).to_dict() if self.latencies_ms else None,
        }


def run_load(
    url: str,
    concurrency: int,
    make_request: RequestFactory,
    requests_per_client: int,
    max_seconds: float,
    stop: threading.Event | None = None,
    on_done: Callable[[], None] | None = None,
) -> LoadResult:
    """Run `concurrency` clients until each sent `requests_per_client`, `max_seconds` passed or `stop` is set."""
    result = LoadResult(concurrency)
    lock = threading.Lock()
    stop = stop or threading.Event()
    deadline = time.monotonic() + max_seconds

    def client_loop(index: int) -> None:
        with ClifClient(url) as client:
            for number in range(requests_per_client):
                if stop.is_set() or time.monotonic() >= deadline:
                    break
                request = make_request(index, number)
                start = time.perf_counter()
                try:
                    client.generate(request)
                except Exception as exc:  # every failure is counted and reported, none is hidden
                    with lock:
                        result.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                finished = time.perf_counter()
                with lock:
                    result.latencies_ms.append((finished - start) * 1000)
                    result.finished_s.append(finished - started)
                if on_done is not None:
                    on_done()
        with lock:
            if result.first_client_done_s is None:
                result.first_client_done_s = time.perf_counter() - started

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(concurrency)]
    started = time.perf_counter()  # read by the clients, which start below
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 60)
    result.wall_s = time.perf_counter() - started
    return result
