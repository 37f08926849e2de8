"""The python backend's own cost of one BLS call on this machine, without any clif-serve code.

`clif-serve bench` reports "BLS + transport per stage call": the pipeline's time per stage call that
Triton does not count as the stage's (queue + compute), less the in-process loop's own time. This
measures the floor of that figure: a python-backend model (`caller`) makes BLS calls to a model
that only returns its input (`echo_<ms>`), either at once or after computing as long as a tiny
UNet step (18 ms, a busy loop). Per call: the round trip the caller sees, the target's
`success` time from Triton's statistics less the hold ("inside Triton's time": the python backend's
hand-off to the model's process and back), and the round trip less the success time ("outside
Triton's time": what `clif-serve bench` counts as BLS + transport).

Each cell runs with the CPUs' idle states as they are and, where `/dev/cpu_dma_latency` can be
written, with a PM-QoS request of 0 us held (idle vCPUs then poll instead of halting), interleaved
over rounds. The models are in benchmarks/bls_floor_models/.

    python benchmarks/bls_floor.py                       # ~2 min on 2 cores (5 rounds)
    python benchmarks/bls_floor.py --quick --out /tmp/x  # smoke run (tests)

Writes benchmarks/results/bls_floor.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tqdm import tqdm

from clif_serve.bench.environment import describe_environment
from clif_serve.bench.results import write_results
from clif_serve.bench.stats import spread
from clif_serve.serving.launcher import Ports, TritonServer

MODELS = Path(__file__).resolve().parent / "bls_floor_models"
CPU_LATENCY = Path("/dev/cpu_dma_latency")
HOLDS_MS = (0, 18)  # 18 ms: about one tiny UNet call at batch 2 on 2 cores
SIDE = 32  # the tiny model's latent side at 256 px: the UNet's sample is [2, 4, 32, 32]


def build_repository(root: Path) -> Path:
    """`caller` and one `echo_<ms>` per hold, from benchmarks/bls_floor_models/."""
    shutil.copytree(MODELS / "caller", root / "caller" / "1")
    shutil.move(root / "caller" / "1" / "config.pbtxt", root / "caller" / "config.pbtxt")
    template = (MODELS / "echo" / "config.pbtxt").read_text()
    for hold in HOLDS_MS:
        name = f"echo_{hold}"
        (root / name / "1").mkdir(parents=True)
        shutil.copy(MODELS / "echo" / "model.py", root / name / "1" / "model.py")
        parameters = f'parameters {{ key: "hold_ms" value: {{ string_value: "{hold}" }} }}\n'
        (root / name / "config.pbtxt").write_text(f'name: "{name}"\n{template}{parameters}')
    return root


@contextlib.contextmanager
def cpu_latency_held(hold: bool) -> Iterator[None]:
    """While inside: a PM-QoS request of 0 us (`hold`), else nothing."""
    if not hold:
        yield
        return
    fd = os.open(CPU_LATENCY, os.O_WRONLY)
    try:
        os.write(fd, struct.pack("i", 0))
        yield
    finally:
        os.close(fd)


def can_hold_cpu_latency() -> bool:
    """Whether this process may write a PM-QoS request."""
    return CPU_LATENCY.exists() and os.access(CPU_LATENCY, os.W_OK)


def _success_ns(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]["success"]
    return int(stats.get("count", 0)), int(stats.get("ns", 0))


def measure(client: grpcclient.InferenceServerClient, hold_ms: int, calls: int) -> dict[str, float]:
    """One cell: `calls` BLS calls from `caller` to `echo_<hold_ms>`."""
    target = f"echo_{hold_ms}"
    inputs = []
    for name, value, kind in (("target", np.array([target.encode()], np.object_), "BYTES"),
                              ("calls", np.array([calls], np.int32), "INT32"),
                              ("side", np.array([SIDE], np.int32), "INT32")):
        tensor = grpcclient.InferInput(name, [1], kind)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    count_before, ns_before = _success_ns(client, target)
    seconds = client.infer("caller", inputs).as_numpy("seconds")
    count_after, ns_after = _success_ns(client, target)
    round_trip_ms = float(seconds.mean() * 1000)
    success_ms = (ns_after - ns_before) / max(1, count_after - count_before) / 1e6
    return {
        "round_trip_mean_ms": round_trip_ms,
        "round_trip_p50_ms": float(np.median(seconds) * 1000),
        "success_mean_ms": success_ms,
        "inside_ms": success_ms - hold_ms,
        "outside_ms": round_trip_ms - success_ms,
    }


def run(calls: int, rounds: int, warmup: int) -> dict:
    """Every (hold, idle policy) cell in each of `rounds` interleaved rounds."""
    policies = [False, True] if can_hold_cpu_latency() else [False]
    cells: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="clif-serve-bls-floor-") as scratch:
        repo = build_repository(Path(scratch) / "repo")
        with TritonServer(repo, Ports.free_on_loopback(), log_file=Path(scratch) / "server.log") as server:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            for hold in HOLDS_MS:
                measure(client, hold, warmup)
            work = [(hold, held) for _ in range(rounds) for hold in HOLDS_MS for held in policies]
            for hold, held in tqdm(work, desc="BLS floor"):
                with cpu_latency_held(held):
                    cells.setdefault(f"{hold}|{held}", []).append(measure(client, hold, calls))
    rows = []
    for key, measured in cells.items():
        hold, held = key.split("|")
        row = {"hold_ms": int(hold), "cpu_latency_held": held == "True", "rounds": measured}
        for metric in measured[0]:
            row[metric] = spread([cell[metric] for cell in measured])
        rows.append(row)
    return {"calls_per_cell": calls, "rounds": rounds, "sample": [2, 4, SIDE, SIDE], "rows": rows}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"Python-backend BLS floor on {env['cpu']} ({env['cpu_count']} cores), tritonserver from nvidia-pytriton "
        f"{env['versions'].get('nvidia-pytriton')}: `caller` -> `echo_<ms>`, a `[2, 4, {SIDE}, {SIDE}]` float32 "
        f"tensor, {report['calls_per_cell']} calls per cell, {report['rounds']} interleaved rounds, median "
        "[min - max] (`python benchmarks/bls_floor.py`).",
        "",
        "| target computes | idle vCPUs | round trip p50 (ms) | target's Triton success per call (ms) "
        "| inside Triton's time, less the compute (ms) | outside Triton's time (ms) |",
        "|---|---|---|---|---|---|",
    ]

    def cell(row: dict, metric: str) -> str:
        value = row[metric]
        return f"{value['median']:.3f} [{value['min']:.3f} - {value['max']:.3f}]"

    for row in report["rows"]:
        idle = "poll (PM-QoS 0 us held)" if row["cpu_latency_held"] else "as configured"
        lines.append(
            f"| {row['hold_ms']} ms | {idle} | {cell(row, 'round_trip_p50_ms')} | {cell(row, 'success_mean_ms')} "
            f"| {cell(row, 'inside_ms')} | {cell(row, 'outside_ms')} |"
        )
    if not any(row["cpu_latency_held"] for row in report["rows"]):
        lines += ["", f"{CPU_LATENCY} could not be written here: the held rows were not run."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Run, write the results, print the table; the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="BLS calls per cell (default: 300)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 calls, 1 round")
    parser.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if args.quick and args.out is None:
        parser.error("--quick writes no committed results: give --out")
    calls, rounds = (10, 1) if args.quick else (args.calls, args.rounds)
    report = run(calls, rounds, warmup=5 if args.quick else 50)
    report["environment"] = describe_environment()
    out = args.out or Path(__file__).resolve().parent / "results"
    json_path, _ = write_results(report, markdown(report), out, "bls_floor")
    print(markdown(report))
    print(f"wrote {json_path}")
    return report


if __name__ == "__main__":
    main()
