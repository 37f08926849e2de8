"""Three real tritonservers on loopback sharing one repository and one concept store, behind one
multi-URL ClifClient: requests spread by outstanding requests, a hot-load through one replica is
used by the next request on every replica, replicas killed mid-load (SIGTERM, then kill -9) and a
rolling restart of all three cost no request, and the same seed gives the same image anywhere.

Bounded: every load runs a fixed number of requests under a deadline, every server is stopped
(and its shared-memory regions checked gone) when the module ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient, ServerError, replica_unavailable
from clif_serve.serving.launcher import Ports, TritonServer, find_tritonserver, free_port
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.replicas import ReplicaPool, parse_urls
from clif_serve.serving.repository import build_repository
from clif_serve.serving.shm import SHM_DIR
from tests.helpers import random_pack
from tests.serving.test_security import _regions, _wait_until_gone

# Three server starts, and five restarts in the slow tests: about 25 s each on 2 idle cores, minutes
# on a busy shared machine; the suite's 600 s per test is not enough for a first test that also exports.
pytestmark = pytest.mark.timeout(1800)

REPLICAS = 3
CLIENTS = 4
SEEDS = (0, 1, 2)
PROMPT = "a photo of <joe> on a beach"
STEPS = 3
LOAD_DEADLINE_S = 240  # a load without restarts
START_S = 300  # the most one (re)start may take on a busy machine


def _request(seed: int) -> GenerationRequest:
    return GenerationRequest(PROMPT, steps=STEPS, seed=seed)


@dataclass
class Fleet:
    servers: list[TritonServer]
    client: ClifClient  # one client for all three, shared by the load threads
    expected: dict[int, np.ndarray]  # seed -> the image a lone request got
    prefixes: list[str] = field(default_factory=list)  # shared-memory prefix of every server started

    @property
    def urls(self) -> list[str]:
        return [server.grpc_url for server in self.servers]

    def start(self, server: TritonServer) -> None:
        server.start(timeout_s=START_S)
        if server.regions is not None:
            self.prefixes.append(server.regions.prefix)

    def successes(self) -> dict[str, int]:
        """clif_pipeline requests each running replica completed (Triton's statistics)."""
        return {
            url: int(self.client.statistics("clif_pipeline", url)["inference_stats"]["success"].get("count", 0))
            for url in self.urls
        }


@pytest.fixture(scope="module")
def fleet(tiny_export, packs, tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    repo = build_repository(tiny_export.root, root / "repo", RepoOptions(pipeline_instances=1))
    install = find_tritonserver()  # one prepared tritonserver folder for all three
    servers = [
        TritonServer(repo, Ports.free_on_loopback(), root / "store", install=install, log_file=root / f"server{i}.log")
        for i in range(REPLICAS)
    ]
    fleet = Fleet(servers, None, {})
    try:
        for server in servers:
            fleet.start(server)
        fleet.client = ClifClient(fleet.urls, timeout_s=120)
        fleet.client.add_concept(packs["joe"])
        fleet.expected = {seed: fleet.client.generate(_request(seed)) for seed in SEEDS}
        yield fleet
    finally:
        if fleet.client is not None:
            fleet.client.close()
        with ThreadPoolExecutor(REPLICAS) as pool:  # at once: a stop mostly waits for the server's stubs to exit
            list(pool.map(TritonServer.stop, servers))
        if install.workdir is not None:
            shutil.rmtree(install.workdir, ignore_errors=True)
    if SHM_DIR.is_dir():
        assert [name for prefix in fleet.prefixes for name in _regions(prefix)] == [], "shared memory left behind"


class Load:
    """CLIENTS threads generating through the fleet's one client until `total` requests, `stop()` or the deadline.

    `forking()`: while it lasts, a `subprocess.Popen` (the launcher's fork of tritonserver) waits until
    no call of this load is in flight and holds new ones back. gRPC cannot fork a process with calls
    in flight (the child aborts in gRPC's fork handlers); in a deployment the servers are not
    children of their clients, here they are, for the instant of the fork only.
    """

    def __init__(self, fleet: Fleet, total: int, deadline_s: float = LOAD_DEADLINE_S):
        self.fleet, self.total = fleet, total
        self.images: list[tuple[int, np.ndarray]] = []
        self.failures: list[str] = []
        self._lock, self._next, self._stop = threading.Lock(), 0, threading.Event()
        self._deadline = time.monotonic() + deadline_s
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(CLIENTS)]
        self._calls = threading.Condition()
        self._in_flight, self._forking = 0, False

    def _generate(self, seed: int) -> np.ndarray:
        with self._calls:
            self._calls.wait_for(lambda: not self._forking)
            self._in_flight += 1
        try:
            return self.fleet.client.generate(_request(seed))
        finally:
            with self._calls:
                self._in_flight -= 1
                self._calls.notify_all()

    @contextlib.contextmanager
    def forking(self):
        """Make `subprocess.Popen` wait for a moment without calls in flight (see the class)."""
        popen = subprocess.Popen
        load = self

        class QuietPopen(popen):
            def __init__(self, *args, **kwargs):
                with load._calls:
                    load._forking = True
                    load._calls.wait_for(lambda: load._in_flight == 0)
                try:
                    super().__init__(*args, **kwargs)
                finally:
                    with load._calls:
                        load._forking = False
                        load._calls.notify_all()

        subprocess.Popen = QuietPopen
        try:
            yield
        finally:
            subprocess.Popen = popen

    def _loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                number, self._next = self._next, self._next + 1
            if number >= self.total:
                return
            seed = SEEDS[number % len(SEEDS)]
            try:
                image = self._generate(seed)
            except Exception as exc:  # every failure is reported by the test
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self.images.append((seed, image))

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    @property
    def done(self) -> int:
        with self._lock:
            return len(self.images) + len(self.failures)

    def wait_for(self, count: int) -> None:
        """Wait until `count` requests have finished (or the load ended)."""
        while self.done < min(count, self.total) and self.running:
            time.sleep(0.05)

    def stop(self) -> None:
        """Send no more requests (those in flight finish)."""
        self._stop.set()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for thread in self._threads:
            thread.join(timeout=max(0.0, self._deadline - time.monotonic()) + 120)

    def check(self, at_least: int | None = None) -> None:
        """No request failed, enough finished (all `total`, unless stopped), and every image is the one
        its seed gave a lone request."""
        assert self.failures == [], self.failures[:5]
        wanted = self.total if at_least is None else at_least
        assert len(self.images) >= wanted, f"{len(self.images)} of {wanted} finished before the deadline"
        diffs = [int(np.abs(image.astype(int) - self.fleet.expected[seed].astype(int)).max()) for seed, image in self.images]
        exact = sum(diff == 0 for diff in diffs)
        print(f"\n{exact} of {len(diffs)} images bit-identical to a lone request of their seed, max diff {max(diffs)}")
        assert max(diffs) <= 1  # batched numerics (requests meeting in a stage batch) may move one level


def test_urls_are_parsed_from_commas_and_repeats():
    assert parse_urls("a:1, b:2") == ("a:1", "b:2")
    assert parse_urls(["a:1,b:2", "c:3"]) == ("a:1", "b:2", "c:3")
    for bad in ("", "a", "a:x", ["a:1", "a:1"]):
        with pytest.raises(Exception, match="url"):
            parse_urls(bad)


def test_calls_go_to_the_replica_with_fewest_in_flight():
    """Two calls held in flight on two replicas: the next call goes to the third; without load, round robin."""
    urls = [f"127.0.0.1:{free_port()}" for _ in range(REPLICAS)]
    pool = ReplicaPool(urls, replica_unavailable)
    release, seen = threading.Event(), []

    def held(client) -> None:
        seen.append(client)
        release.wait(10)

    holders = [threading.Thread(target=pool.call, args=(held,)) for _ in range(2)]
    for thread in holders:
        thread.start()
    while sum(pool.outstanding().values()) < 2:
        time.sleep(0.01)
    busy = {url for url, count in pool.outstanding().items() if count}
    third = pool.call(lambda client: next(url for url, r in pool.replicas.items() if r.client is client))
    release.set()
    for thread in holders:
        thread.join()
    assert len(busy) == 2 and third not in busy
    order = [pool.call(lambda client: next(u for u, r in pool.replicas.items() if r.client is client)) for _ in range(6)]
    assert sorted(order[:3]) == sorted(urls) and order[3:] == order[:3]
    pool.close()


def test_a_call_to_one_replica_outlasts_its_channels_stale_refusal():
    """A replica just back (here a bare gRPC server on the port that refused a moment ago): its channel
    is still in reconnection back-off, yet a call addressed to it reaches it (the server answers
    UNIMPLEMENTED, not the stale "Connection refused"); a replica that stays down still fails."""
    import grpc

    url = f"127.0.0.1:{free_port()}"
    client = ClifClient(url, timeout_s=10)
    with pytest.raises(ServerError, match="UNAVAILABLE"):
        client.statistics("clif_pipeline", url)  # refused: the channel now waits before its next attempt
    server = grpc.server(ThreadPoolExecutor(1))
    server.add_insecure_port(url)
    server.start()
    try:
        with pytest.raises(ServerError, match="UNIMPLEMENTED"):
            client.statistics("clif_pipeline", url)
        assert not client.is_ready(url)  # reached, and it is no Triton server
    finally:
        server.stop(None)
        client.close()


def test_a_down_replica_is_skipped_and_the_last_error_is_raised(fleet):
    """A client given a dead address besides the live ones: every generation succeeds; with only dead
    addresses the error is the library's ServerError, after one try per address."""
    dead = f"127.0.0.1:{free_port()}"
    with ClifClient([dead, *fleet.urls], timeout_s=120) as client:
        for seed in SEEDS:
            assert np.abs(client.generate(_request(seed)).astype(int) - fleet.expected[seed].astype(int)).max() <= 1
        assert client.is_ready() and not client.is_ready(dead)
    with ClifClient([dead, f"127.0.0.1:{free_port()}"], timeout_s=10) as client, pytest.raises(Exception, match="UNAVAILABLE"):
        client.generate(_request(0))


def test_the_cli_takes_replicas_comma_separated_and_repeated(fleet, tmp_path, capsys):
    from clif_serve.cli import main

    dead = f"127.0.0.1:{free_port()}"
    urls = ["--url", f"{dead},{fleet.urls[0]}", "--url", ",".join(fleet.urls[1:])]
    assert main(["concepts", "list", *urls]) == 0
    assert "<joe>" in capsys.readouterr().out
    out = tmp_path / "joe.png"
    assert main(["generate", PROMPT, *urls, "--steps", str(STEPS), "--seed", "1", "-o", str(out)]) == 0
    assert out.is_file()
    assert main(["concepts", "list", "--url", f"{dead},{dead}"]) == 2
    assert "url: names a replica twice" in capsys.readouterr().err


def test_requests_spread_over_the_replicas(fleet):
    before = fleet.successes()
    with Load(fleet, total=30) as load:
        pass
    load.check()
    served = {url: count - before[url] for url, count in fleet.successes().items()}
    print(f"\nrequests per replica: {served}")
    assert sum(served.values()) == load.total
    assert min(served.values()) >= load.total // 6, served  # an even spread gives 10 each


def test_a_hot_load_is_used_by_the_next_request_on_every_replica(fleet, tiny_base):
    pack = random_pack(tiny_base, "fresh", seed=77)
    reply = fleet.client.add_concept(pack)
    assert reply["changed"] and "fresh" in {c["name"] for c in reply["concepts"]}
    try:
        for url in fleet.urls:
            with ClifClient(url) as one:
                assert one.generate(GenerationRequest("<fresh> and <joe>", steps=2, seed=5)).shape == (1, 64, 64, 3)
                assert one.add_concept(pack)["changed"] is False  # the add a fail-over repeats changes nothing
    finally:
        fleet.client.remove_concept("fresh")


def _sigterm(server: TritonServer) -> None:
    """SIGTERM to tritonserver by PID (a pod's stop): it finishes what it runs and refuses new requests."""
    os.kill(server.process.pid, signal.SIGTERM)
    server.process.wait(timeout=120)


def _kill_9(server: TritonServer) -> None:
    """SIGKILL to tritonserver and its stubs by process group (a lost node): in-flight requests fail."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=60)
    _wait_until_gone(server.process.pid)


@pytest.mark.slow
def test_replicas_killed_mid_load_cost_no_request(fleet):
    """SIGTERM to one replica, then kill -9 to another, while 4 threads generate: none fails; both come back."""
    first, second, survivor = fleet.servers
    with Load(fleet, total=36) as load:
        load.wait_for(6)
        _sigterm(first)
        load.wait_for(14)
        _kill_9(second)
        load.wait_for(22)
    load.check()
    for server in (first, second):
        server.stop()  # removes the regions of the killed one
        fleet.start(server)
    before = fleet.successes()
    with Load(fleet, total=12) as back:
        pass
    back.check()
    after = fleet.successes()
    assert all(after[server.grpc_url] > before[server.grpc_url] for server in (first, second)), (before, after)


def _wait_in_flight(fleet: Fleet, load: Load, server: TritonServer, timeout_s: float = 60) -> None:
    """Wait until the client has a request of the running `load` in flight on `server`."""
    deadline = time.monotonic() + timeout_s
    while fleet.client.replicas.outstanding()[server.grpc_url] == 0:
        assert load.running, f"the load ended ({load.done} requests, failures {load.failures[:3]}) before the restart"
        assert time.monotonic() < deadline, f"no request went to {server.grpc_url} in {timeout_s:.0f} s"
        time.sleep(0.005)


def _wait_serving(fleet: Fleet, load: Load, server: TritonServer, requests: int = 2, timeout_s: float = 60) -> None:
    """Wait until a (re)started replica has completed `requests` generations of the running `load`."""
    deadline = time.monotonic() + timeout_s
    while fleet.successes()[server.grpc_url] < requests:
        assert load.running, f"the load ended ({load.done} requests, failures {load.failures[:3]}) before the restart"
        assert time.monotonic() < deadline, f"{server.grpc_url} got no requests {timeout_s:.0f} s after its start"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_rolling_restart_costs_no_request(fleet):
    """Each replica stopped (SIGINT, as `clif-serve serve` stops on SIGTERM) while a request is in flight on
    it, and started again in turn, the next only once the last is ready, while 4 threads generate."""
    # Bounded by the deadline and stop(), not by a count (a few requests/s may run for minutes).
    with Load(fleet, total=10**6, deadline_s=LOAD_DEADLINE_S + REPLICAS * START_S) as load:
        load.wait_for(4)
        for server in fleet.servers:
            _wait_in_flight(fleet, load, server)
            server.stop()
            with load.forking():
                fleet.start(server)
            _wait_serving(fleet, load, server)  # back in the client's rotation before the next one goes
        load.stop()
    load.check(at_least=16)
    print(f"{len(load.images)} requests during the rolling restart")
