"""Soak: N clients for M minutes against the served tiny model, with hot-loads, removals, LoRA
replacements and random bad requests mixed in. A benchmark, not a test.

    python benchmarks/soak.py                          # 4 clients, 10 minutes, a local server on `tiny`
    python benchmarks/soak.py --clients 8 --minutes 30 --workdir /tmp/soak

Good requests name concepts that stay loaded (`<joe>`, `<rex>`, and `<swap>`, whose pack and LoRA
set are *replaced* every few seconds while requests use it), so every failure of a good request is
a defect. Meanwhile a churn thread hot-loads a fresh concept (every other one with a fresh LoRA
set), uses it once and removes it, and an attacker thread sends bad requests of every kind to the
pipeline, to each stage model and to `clif_concepts`.

Reports (benchmarks/results/soak.json and soak.md): failed good requests (goal 0), p50/p99 latency
of the first and of the last minute (drift), resident memory of tritonserver and its stubs sampled
over the run (goal: flat), and the outcome of every kind of bad request.
"""

from __future__ import annotations

import argparse
import random
import struct
import threading
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from clif_serve.bench.baselines import stand_in_lora, stand_in_packs
from clif_serve.bench.environment import describe_environment
from clif_serve.bench.results import write_results
from clif_serve.bench.stats import LatencySummary
from clif_serve.concepts.pack import pack_to_bytes
from clif_serve.errors import InputError
from clif_serve.local import local_server
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.options import RepoOptions

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 4
RSS_EVERY_S = 10.0


def process_tree_rss(root_pid: int) -> dict[str, int]:
    """Resident bytes of a process and all its descendants, summed by model (stubs) or `tritonserver` (from /proc)."""
    parents, rss, labels = {}, {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            status = (entry / "status").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat[1])
        line = next((row for row in status.splitlines() if row.startswith("VmRSS:")), None)
        rss[pid] = int(line.split()[1]) * 1024 if line else 0
        stub = len(argv) > 1 and argv[0].endswith(b"triton_python_backend_stub")
        labels[pid] = Path(argv[1].decode()).parent.parent.name if stub else Path(argv[0].decode()).name
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, parent in parents.items() if parent == current and pid not in tree]
        tree.update(children)
        frontier += children
    by_label: dict[str, int] = defaultdict(int)
    for pid in tree:
        by_label[labels.get(pid, "?")] += rss.get(pid, 0)
    return dict(sorted(by_label.items()))


def _raw(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def bad_requests(export, base) -> list[tuple[str, str, list]]:
    """(kind, model, inputs) of bad requests: pipeline fields, raw stage tensors, bad packs."""
    deployment, spec = export.deployment, export.spec
    encoder = spec.text_encoders[0]
    rows, hidden = deployment.served_concept_rows, encoder.hidden_size
    latent = spec.default_image_size // spec.vae_scale_factor
    big = 2 * deployment.height.max // spec.vae_scale_factor

    def pipeline(**fields):
        return [_raw(k, np.array([v], dtype=np.object_ if isinstance(v, bytes) else type(v))) for k, v in fields.items()]

    def unet(size=latent, value=0.0, lora=None):
        tensors = {
            "sample": np.full((2, spec.latent_channels, size, size), value, np.float32),
            "timestep": np.full((2, 1), 500.0, np.float32),
            "encoder_hidden_states": np.zeros((2, spec.max_length, hidden), np.float32),
        }
        if lora is not None:
            tensors["lora_id"] = np.array([[lora]] * 2, np.object_)
        return [_raw(k, v) for k, v in tensors.items()]

    good = stand_in_packs(base, [("bad", "dog")], seed=5)[0]
    nan = {k: v.clone() for k, v in good.embeddings.items()}
    next(iter(nan.values()))[0, 0] = float("nan")
    control = lambda data: [_raw("action", np.array([b"add"], np.object_)), _raw("pack", np.array([data], np.object_))]  # noqa: E731
    return [
        ("unknown concept", "clif_pipeline", pipeline(prompt=b"a photo of <nobody>")),
        ("prompt over the byte limit", "clif_pipeline", pipeline(prompt=b"a photo " * 2000)),
        ("height not a multiple", "clif_pipeline", pipeline(prompt=b"x", height=np.int32(60))),
        ("steps 0", "clif_pipeline", pipeline(prompt=b"x", steps=np.int32(0))),
        ("prompt not UTF-8", "clif_pipeline", pipeline(prompt=b"\xff\xfe")),
        ("token id 10^6", "text_encoder", [_raw("input_ids", np.full((2, encoder.max_length), 10**6, np.int64)),
                                           _raw("concept_table", np.zeros((2, rows, hidden), np.float32))]),
        ("latents twice the served size", "unet", unet(size=big)),
        ("latents inf", "unet", unet(value=np.inf)),
        ("lora_id b'\\xff'", "unet_lora", unet(lora=b"\xff")),
        ("lora_id unknown set", "unet_lora", unet(lora=b"0123456789abcdef")),
        ("vae latents twice the served size", "vae_decoder", [_raw("latent_sample", np.zeros((1, spec.latent_channels, big, big), np.float32))]),
        ("pack truncated", "clif_concepts", control(pack_to_bytes(good)[:-9])),
        ("pack nested header", "clif_concepts", control(struct.pack("<Q", 400_000) + b"[" * 200_000 + b"]" * 200_000)),
        ("pack with NaN", "clif_concepts", control(_unvalidated(good, nan))),
    ]


def _unvalidated(pack, embeddings) -> bytes:
    from safetensors.torch import save

    return save({f"embeddings.{k}": v.contiguous() for k, v in embeddings.items()}, metadata=pack.manifest())


def soak(args: argparse.Namespace) -> dict:
    base = load_base_model("tiny")
    options = RepoOptions(pipeline_instances=4, text_encoder_delay_us=2000, unet_delay_us=2000)
    with local_server("tiny", args.workdir, options) as local:
        url = local.url
        joe, rex, swap = stand_in_packs(base, [("joe", "person"), ("rex", "dog"), ("swap", "cat")], seed=1)
        with ClifClient(url) as admin:
            for pack in (joe, rex, replace(swap, lora=stand_in_lora(base, seed=0))):
                admin.add_concept(pack, replace=True)
        started = time.monotonic()
        deadline = started + 60 * args.minutes
        records: list[tuple[float, float]] = []  # (seconds since start at completion, latency ms)
        failures: list[str] = []
        outcomes: dict[str, Counter] = defaultdict(Counter)
        churn_counts = Counter()
        rss: list[dict] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            prompts = ["a photo of <joe>", "<rex> on a beach", "<swap> in a garden", "<joe> and <rex>"]
            with ClifClient(url, timeout_s=120) as connection:
                number = 0
                while time.monotonic() < deadline:
                    request = GenerationRequest(prompts[(index + number) % len(prompts)], steps=STEPS, seed=number)
                    begin = time.perf_counter()
                    try:
                        connection.generate(request)
                        with lock:
                            records.append((time.monotonic() - started, 1000 * (time.perf_counter() - begin)))
                    except Exception as exc:  # a good request failed: the soak's defect count
                        with lock:
                            failures.append(f"{time.monotonic() - started:.0f}s {type(exc).__name__}: {exc}"[:300])
                    number += 1

        def churn() -> None:
            rng = random.Random(7)
            with ClifClient(url, timeout_s=120) as connection:
                index = 0
                while time.monotonic() < deadline:
                    pack = stand_in_packs(base, [(f"churn{index}", "dog")], seed=100 + index)[0]
                    if index % 2:
                        pack = replace(pack, lora=stand_in_lora(base, seed=1000 + index))
                    try:
                        connection.add_concept(pack)
                        connection.generate(GenerationRequest(f"a photo of <churn{index}>", steps=2, seed=index))
                        connection.remove_concept(pack.name)
                        connection.add_concept(replace(swap, lora=stand_in_lora(base, seed=2000 + index)), replace=True)
                        churn_counts["cycles"] += 1
                    except Exception as exc:  # the churn's own requests are good requests too
                        with lock:
                            failures.append(f"churn {type(exc).__name__}: {exc}"[:300])
                    index += 1
                    time.sleep(rng.uniform(0.5, 2.0))

        def attacker() -> None:
            rng = random.Random(11)
            catalog = bad_requests(local.export, base)
            with grpcclient.InferenceServerClient(url) as raw:
                while time.monotonic() < deadline:
                    kind, model, inputs = rng.choice(catalog)
                    try:
                        raw.infer(model, inputs, client_timeout=60)
                        outcome = "ACCEPTED"
                    except InferenceServerException as exc:
                        message = (exc.message() or "").split("] ", 1)[-1]
                        named = message.split(":", 1)[0] if ":" in message else "-"
                        outcome = f"{exc.status()} ({named})"
                    with lock:
                        outcomes[kind][outcome] += 1
                    time.sleep(rng.uniform(0.05, 0.4))

        def sample_rss() -> None:
            while time.monotonic() < deadline + 1:
                tree = process_tree_rss(local.server.process.pid)
                with lock:
                    rss.append({"t_s": round(time.monotonic() - started, 1), "total_mb": sum(tree.values()) / 2**20,
                                "mb_by_process": {label: value / 2**20 for label, value in tree.items()}})
                time.sleep(RSS_EVERY_S)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        threads += [threading.Thread(target=target) for target in (churn, attacker, sample_rss)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60 * args.minutes + 300)
        with ClifClient(url) as admin:
            final = admin.store_listing()
    return summarise(args, records, failures, outcomes, churn_counts, rss, final)


def _minute(records, first: bool, total_s: float) -> dict | None:
    window = [ms for t, ms in records if (t < 60 if first else t >= total_s - 60)]
    return LatencySummary.of(window).to_dict() if window else None


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def summarise(args, records, failures, outcomes, churn_counts, rss, final) -> dict:
    total_s = 60 * args.minutes
    first, last = _minute(records, True, total_s), _minute(records, False, total_s)
    slope = None
    if len(rss) >= 3:
        times = np.array([sample["t_s"] for sample in rss[1:]]) / 60
        slope = float(np.polyfit(times, [sample["total_mb"] for sample in rss[1:]], 1)[0])
    return {
        "environment": describe_environment({"shared_machine": True}),
        "config": {"clients": args.clients, "minutes": args.minutes, "steps": STEPS, "model": "tiny"},
        "good_requests": {"completed": len(records), "failed": len(failures), "failures": failures[:20]},
        "latency_ms": {
            "first_minute": first,
            "last_minute": last,
            "p50_drift": (last["p50"] / first["p50"]) if first and last else None,
            "p99_drift": (last["p99"] / first["p99"]) if first and last else None,
            "per_minute_p50": [_median([ms for t, ms in records if minute * 60 <= t < (minute + 1) * 60]) for minute in range(args.minutes)],
        },
        "churn_cycles": churn_counts["cycles"],
        "bad_requests": {kind: dict(counts) for kind, counts in sorted(outcomes.items())},
        "rss": {"samples": rss, "slope_mb_per_min_after_first_sample": slope},
        "final_store": {"concepts": [c["name"] for c in final["concepts"]], "skipped": final["skipped"]},
    }


def markdown(report: dict) -> str:
    env, cfg, good, lat, rss = report["environment"], report["config"], report["good_requests"], report["latency_ms"], report["rss"]

    def ms(summary):
        return "-" if not summary else f"{summary['p50']:.0f} / {summary['p99']:.0f} ({summary['count']} requests)"

    samples = rss["samples"]
    lines = [
        f"Soak of `{cfg['model']}` ({cfg['steps']} steps, 64x64): {cfg['clients']} clients for {cfg['minutes']} minutes on "
        f"{env['cpu']} ({env['cpu_count']} cores, shared with other jobs), with {report['churn_cycles']} churn cycles "
        "(hot-load a fresh concept, every other one with a fresh LoRA set, use it, remove it, and replace `<swap>`'s "
        "LoRA set while clients use it) and random bad requests. `python benchmarks/soak.py`.",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
        f"| 0 failed good requests | {good['failed']} of {good['completed'] + good['failed']} | {'yes' if good['failed'] == 0 else 'no'} |",
        f"| p50 drift, last / first minute | {lat['p50_drift']:.2f}x | - |" if lat["p50_drift"] else "| p50 drift | - | - |",
        f"| p99 drift, last / first minute | {lat['p99_drift']:.2f}x | - |" if lat["p99_drift"] else "| p99 drift | - | - |",
        f"| RSS of tritonserver + stubs flat | {samples[0]['total_mb']:.0f} MB -> {samples[-1]['total_mb']:.0f} MB "
        f"({rss['slope_mb_per_min_after_first_sample']:+.1f} MB/min after the first sample) | - |" if samples else "| RSS | - | - |",
        "",
        f"Latency p50 / p99 (ms): first minute {ms(lat['first_minute'])}; last minute {ms(lat['last_minute'])}.",
        "Per-minute p50 (ms): " + ", ".join("-" if value is None else f"{value:.0f}" for value in lat["per_minute_p50"]) + ".",
        "",
        "| process (all instances) | RSS first sample (MB) | RSS last sample (MB) |",
        "|---|---|---|",
        *[
            f"| {label} | {samples[0]['mb_by_process'].get(label, 0):.0f} | {samples[-1]['mb_by_process'].get(label, 0):.0f} |"
            for label in (samples[-1]["mb_by_process"] if samples else {})
        ],
        "",
        "| bad request | outcomes (status (field the error names): count) |",
        "|---|---|",
    ]
    for kind, counts in report["bad_requests"].items():
        lines.append(f"| {kind} | " + "; ".join(f"{outcome}: {count}" for outcome, count in sorted(counts.items())) + " |")
    lines += ["", f"Store at the end: {', '.join(report['final_store']['concepts'])}; skipped: {report['final_store']['skipped'] or 'none'}."]
    if good["failures"]:
        lines += ["", "Failed good requests (first 20):", *[f"* {line}" for line in good["failures"]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--workdir", default=None, help="keep the export, repository and server log here")
    parser.add_argument("--out", default=str(RESULTS), help="folder for soak.json and soak.md")
    args = parser.parse_args()
    if args.clients < 1 or args.minutes < 2:
        raise InputError("minutes", "a soak needs at least 1 client and 2 minutes (first and last minute)")
    report = soak(args)
    text = markdown(report)
    write_results(report, text, args.out, "soak")
    print(text)


if __name__ == "__main__":
    main()
