"""Replicas: three tritonservers on loopback sharing one repository and one concept store. A benchmark.

    flock /tmp/clif-heavy.lock python benchmarks/replicas.py            # tiny, 60 adds, 1/2/3 replicas
    python benchmarks/replicas.py --adds 100 --clients 6 --requests 120 --workdir /tmp/replicas

Measures (benchmarks/results/replicas.json and replicas.md):

* Cross-replica visibility of a hot-load: a pack is added through one replica (in turn), then every
  other replica is asked for its store listing in a tight loop until the pack is in it; the time
  from the add's reply to that listing, p50/p99 over all adds and replicas. Every fifth pack is then
  also generated with (one step) on every other replica: the first request must succeed. Each pack
  is removed again, and the removal's visibility is measured the same way.
* Aggregate throughput of 1, 2 and 3 replicas: the same closed-loop load (N clients, each with
  its own multi-URL ClifClient) against the first 1, 2 or 3 replicas, in two interleaved rounds,
  reported as requests/s and as a ratio to 1 replica within this run. All three servers run
  throughout; only the number the clients use changes. On a machine with fewer cores than replicas
  x the cores one replica uses, this shows overhead, not scaling.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from clif_serve.bench.baselines import stand_in_packs
from clif_serve.bench.environment import describe_environment
from clif_serve.bench.load import run_load
from clif_serve.bench.results import write_results
from clif_serve.bench.stats import LatencySummary
from clif_serve.errors import InputError
from clif_serve.local import prepare_export
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.launcher import Ports, TritonServer, find_tritonserver
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.repository import build_repository

RESULTS = Path(__file__).resolve().parent / "results"
REPLICAS = 3
POLL_TIMEOUT_S = 30.0


def _listed(client: ClifClient, name: str) -> bool:
    return any(concept["name"] == name for concept in client.list_concepts())


def _seen_after(client: ClifClient, name: str, present: bool, since: float) -> tuple[float, int]:
    """Milliseconds from `since` until the replica's listing shows `name` present (or absent), and the polls."""
    polls = 0
    while time.perf_counter() - since < POLL_TIMEOUT_S:
        polls += 1
        if _listed(client, name) is present:
            return (time.perf_counter() - since) * 1000, polls
    raise TimeoutError(f"{name} not {'listed' if present else 'gone'} after {POLL_TIMEOUT_S:.0f} s")


def visibility(clients: list[ClifClient], base, adds: int) -> dict:
    """Add (and remove) `adds` packs, each through one replica in turn, and time when the others see it."""
    packs = stand_in_packs(base, [(f"vis{i}", "dog") for i in range(adds)], seed=1000)
    added_ms, removed_ms, polls, usable, tried = [], [], [], 0, 0
    for index, pack in enumerate(tqdm(packs, desc="hot-loads", unit="add")):
        writer = clients[index % len(clients)]
        others = [client for client in clients if client is not writer]
        writer.add_concept(pack)
        since = time.perf_counter()
        for other in others:
            elapsed, count = _seen_after(other, pack.name, True, since)
            added_ms.append(elapsed)
            polls.append(count)
        if index % 5 == 0:
            for other in others:
                tried += 1
                try:
                    other.generate(GenerationRequest(f"a photo of <{pack.name}>", steps=1, seed=index))
                    usable += 1
                except InputError as exc:  # an unknown trigger: the replica did not see the pack yet
                    print(f"not usable on the first request: {exc}")
        writer.remove_concept(pack.name)
        since = time.perf_counter()
        for other in others:
            removed_ms.append(_seen_after(other, pack.name, False, since)[0])
    return {
        "adds": adds,
        "replicas": len(clients),
        "add_visible_ms": LatencySummary.of(added_ms).to_dict(),
        "remove_visible_ms": LatencySummary.of(removed_ms).to_dict(),
        "first_poll_hits": sum(count == 1 for count in polls),
        "observations": len(polls),
        "usable_on_first_request": f"{usable}/{tried}",
    }


def throughput(urls: list[str], clients: int, requests: int, rounds: int, steps: int) -> list[dict]:
    """Closed-loop requests/s against the first 1..len(urls) replicas, `rounds` interleaved rounds."""
    rows = []
    per_client = max(1, requests // clients)

    def request(client_index: int, number: int) -> GenerationRequest:
        return GenerationRequest("a photo of a dog", steps=steps, seed=client_index * 1000 + number)

    for round_index in range(rounds):
        for count in tqdm(range(1, len(urls) + 1), desc=f"throughput round {round_index + 1}", unit="setup"):
            targets = urls[:count]
            run_load(targets, clients, request, 2, 120)  # warm-up: connections, first batches
            result = run_load(targets, clients, request, per_client, 600)
            rows.append({"round": round_index + 1, "replicas": count, **result.to_dict()})
    for row in rows:
        ones = [r["throughput_rps"] for r in rows if r["replicas"] == 1 and r["round"] == row["round"]]
        row["ratio_to_1_replica"] = row["throughput_rps"] / ones[0] if ones and ones[0] else None
    return rows


def run(args: argparse.Namespace) -> dict:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="clif-replicas-"))
    base = load_base_model("tiny")
    export = prepare_export("tiny", work / "export")
    repo = build_repository(export.root, work / "repo", RepoOptions(pipeline_instances=args.pipeline_instances), overwrite=True)
    store = work / "concepts"
    shutil.rmtree(store, ignore_errors=True)
    install = find_tritonserver()
    servers = [
        TritonServer(repo, Ports.free_on_loopback(), store, install=install, log_file=work / f"server{i}.log")
        for i in range(REPLICAS)
    ]
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        for server in tqdm(servers, desc="starting replicas", unit="server"):
            server.start(timeout_s=600)
        ready_s = time.perf_counter() - started
        urls = [server.grpc_url for server in servers]
        clients = [ClifClient(url, timeout_s=120) for url in urls]
        try:
            seen = visibility(clients, base, args.adds)
        finally:
            for client in clients:
                client.close()
        rows = throughput(urls, args.clients, args.requests, args.rounds, args.steps)
    finally:
        for server in servers:
            server.stop()
        if install.workdir is not None:
            shutil.rmtree(install.workdir, ignore_errors=True)
    return {
        "environment": describe_environment({"shared_machine": args.shared}),
        "settings": {
            "model": "tiny",
            "replicas": REPLICAS,
            "pipeline_instances": args.pipeline_instances,
            "clients": args.clients,
            "requests": args.requests,
            "rounds": args.rounds,
            "steps": args.steps,
        },
        "three_replicas_ready_s": ready_s,
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "visibility": seen,
        "throughput": rows,
    }


def markdown(report: dict) -> str:
    env, settings, seen = report["environment"], report["settings"], report["visibility"]
    added, removed = seen["add_visible_ms"], seen["remove_visible_ms"]
    lines = [
        "# Replicas: hot-load visibility and throughput of 1, 2, 3 replicas",
        "",
        f"Three tritonservers on loopback sharing one repository and one concept store (tiny model, "
        f"{settings['pipeline_instances']} clif_pipeline instances each), {env['cpu']}, {env['cpu_count']} cores"
        + (", on a machine shared with other developers' jobs" if env.get("shared_machine") else "")
        + f" (1-minute load average {report['load_average_1min']['before']:.1f} before the run, "
        f"{report['load_average_1min']['after']:.1f} after). Three replicas were ready "
        f"{report['three_replicas_ready_s']:.0f} s after the first start.",
        "",
        "## Cross-replica visibility of a hot-load",
        "",
        f"{seen['adds']} packs, each added through one replica in turn; the other {seen['replicas'] - 1} replicas "
        "polled with `list` from the add's reply until the pack was listed (then removed, the same way).",
        "",
        "| change | observations | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        f"| add visible | {added['count']} | {added['p50']:.1f} | {added['p99']:.1f} | {added['max']:.1f} |",
        f"| remove visible | {removed['count']} | {removed['p50']:.1f} | {removed['p99']:.1f} | {removed['max']:.1f} |",
        "",
        f"The first listing after the add's reply already held the pack in {seen['first_poll_hits']} of "
        f"{seen['observations']} observations, so these figures are one `list` round trip: a change is visible "
        "on the next request on every replica. A one-step generation naming the new concept on every other "
        f"replica succeeded at the first request: {seen['usable_on_first_request']}.",
        "",
        "## Aggregate throughput",
        "",
        f"{settings['clients']} closed-loop clients, each with its own multi-URL ClifClient, {settings['steps']}-step "
        f"64x64 requests, {settings['requests']} per row after a warm-up; rounds interleaved. Ratios are within a round.",
        "",
        "| round | replicas | completed | failed | requests/s | ratio to 1 replica | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["throughput"]:
        latency = row["latency_ms"] or {}
        ratio = f"{row['ratio_to_1_replica']:.2f}" if row["ratio_to_1_replica"] is not None else "-"
        lines.append(
            f"| {row['round']} | {row['replicas']} | {row['completed']} | {row['failed']} | {row['throughput_rps']:.2f} "
            f"| {ratio} | {latency.get('p50', 0):.0f} | {latency.get('p99', 0):.0f} |"
        )
    lines += [
        "",
        f"Three replicas on {env['cpu_count']} CPU cores cannot scale: every replica runs on the same cores, so "
        "more replicas add no compute. A ratio above 1 here comes from more requests overlapping (more "
        "pipeline instances in all), one below 1 from more processes competing for the cores, and both move "
        "with the other jobs of a shared machine. This is overhead, not a scaling result. Replicas scale "
        "when each has its own cores or GPU, as on Kubernetes with one GPU per pod (docs/deploy.md); that "
        "was not run here.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adds", type=int, default=60, help="hot-loads to time (default 60)")
    parser.add_argument("--clients", type=int, default=6, help="closed-loop clients of the throughput rows")
    parser.add_argument("--requests", type=int, default=60, help="requests per throughput row")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the 1/2/3-replica rows")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per request")
    parser.add_argument("--pipeline-instances", type=int, default=2, help="clif_pipeline instances per replica")
    parser.add_argument("--shared", action="store_true", help="record that the machine was shared")
    parser.add_argument("--workdir", default=None, help="keep the export, repository and logs here")
    parser.add_argument("--out", default=str(RESULTS), help="folder for replicas.json and replicas.md")
    args = parser.parse_args()
    report = run(args)
    text = markdown(report)
    write_results(report, text, args.out, "replicas")
    print(text)


if __name__ == "__main__":
    main()
