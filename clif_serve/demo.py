"""The served flow end to end on the embedded `tiny` model, with a latency summary.

    python -m clif_serve.demo [--workdir DIR] [--steps 20] [--requests 10] [--json FILE]

build tiny -> export -> model repository -> tritonserver -> hot-load two concepts -> one
multi-concept gRPC request -> the same two concepts in regions (<joe> left, <rex> right) -> hot-load
a third concept and use it -> latency of served requests
against the same requests in process (the ONNX Runtime executor on the same ONNX files, same
seed and concepts; `--threads` sets onnxruntime's intra-op threads on both sides) -> where the
served time goes (Triton's statistics) -> stop the server -> the `tiny-bank` export (a LoRA bank
UNet) served: two concept sets with different LoRA sets requested concurrently share UNet
executions (Triton's batch statistics). The concepts are new packs initialised from class words
and the LoRA sets seeded stand-ins (no training), which is enough to show the mechanics.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from clif_serve.bench.baselines import stand_in_lora
from clif_serve.bench.server_stats import difference, per_pipeline_request, snapshot
from clif_serve.bench.stats import LatencySummary
from clif_serve.concepts.create import new_pack
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.contract.stages import UNET, UNET_BANK, VAE_DECODER
from clif_serve.local import local_server
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.factory import ort_pipeline
from clif_serve.runtime.images import save_pngs
from clif_serve.runtime.regions import Region
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.parameters import ModelParameters
from clif_serve.serving.protocol import PIPELINE_MODEL


def timings(runs: dict[str, Callable[[], object]], count: int) -> dict[str, dict[str, float]]:
    """Latency summary (ms) of each run after one warm-up call each.

    The runs take turns (A, B, C, A, B, C, ...), so a change in machine load hits them alike.
    """
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(count):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            samples[name].append(1000 * (time.perf_counter() - started))
    return {name: LatencySummary.of(values).to_dict() for name, values in samples.items()}


def _batch_sizes(client: ClifClient, model: str) -> dict[int, int]:
    """Executions of `model` so far by batch size (samples per execution), from Triton's statistics."""
    stats = client.statistics(model).get("batch_stats", [])
    return {int(row["batch_size"]): int(row["compute_infer"]["count"]) for row in stats}


def lora_sets_share_executions(base, work: Path, steps: int, rounds: int = 3) -> dict:
    """Serve the `tiny-bank` export, send requests of two concept sets with different LoRA sets from
    two clients at once, and count the `unet_bank` executions that held samples of both."""
    amy, ben = (
        replace(new_pack(base, name, word), lora=stand_in_lora(base, seed=seed))
        for name, word, seed in (("amy", "person", 11), ("ben", "dog", 12))
    )
    # A 4 ms queue delay at the UNet lets the two clients' steps meet in one execution.
    options = RepoOptions(unet_delay_us=4_000)
    with local_server("tiny", work, options, recipe="tiny-bank") as service, ClifClient(service.url) as client:
        for pack in (amy, ben):
            client.add_concept(pack, replace=True)
        requests = [GenerationRequest(f"a photo of <{p.name}>", steps=steps, seed=5) for p in (amy, ben)]
        for request in requests:  # warm-up, one at a time
            client.generate(request)
        before = _batch_sizes(client, UNET_BANK)
        start, errors = threading.Barrier(len(requests)), []

        def send(request: GenerationRequest) -> None:
            with ClifClient(service.url) as own:
                for _ in range(rounds):
                    start.wait(timeout=300)
                    try:
                        own.generate(request)
                    except Exception as exc:  # reported below
                        errors.append(exc)

        threads = [threading.Thread(target=send, args=(request,)) for request in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        after = _batch_sizes(client, UNET_BANK)
    executions = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    # Each request sends 2 samples per UNet call (guidance) and a client sends one request at a time,
    # so an execution of more than 2 samples held both clients' requests: both LoRA sets.
    shared = sum(count for size, count in executions.items() if size > 2)
    return {
        "lora_sets": [pack.lora.set_id for pack in (amy, ben)],
        "unet_bank_executions": sum(executions.values()),
        "shared_executions": shared,
        "by_batch_size": {size: count for size, count in sorted(executions.items()) if count},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m clif_serve.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workdir", default=None, help="where export, repository, store and images go (default: temp)"
    )
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per request (default: 20)")
    parser.add_argument("--requests", type=int, default=10, help="timed requests per pipeline (default: 10)")
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads (default: 0 = cores)"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="clif-serve-demo-"))
    figures: dict = {"steps": args.steps, "threads": args.threads}

    base = load_base_model("tiny")
    joe, rex, ann = (
        new_pack(base, name, word) for name, word in (("joe", "person"), ("rex", "dog"), ("ann", "cat"))
    )
    options = RepoOptions(models=ModelParameters(intra_op_threads=args.threads))
    with local_server("tiny", work, options) as service, ClifClient(service.url) as client:
        folder = service.export
        figures["export_s"], figures["server_ready_s"] = service.export_s, service.ready_s
        ort = ort_pipeline(folder.root, (joe, rex, ann), OrtSettings(intra_op_threads=args.threads))
        print(f"server ready in {service.ready_s:.1f} s at {service.url} (log: {work / 'server.log'})")
        for pack in (joe, rex):
            client.add_concept(pack, replace=True)
        request = GenerationRequest("a photo of <joe> walking <rex> on the beach", steps=args.steps, seed=1)
        print("multi-concept request ->", *save_pngs(client.generate(request), work / "joe-and-rex.png"))
        regions = (Region("a photo of <joe>", box=(0, 0, 0.5, 1)), Region("<rex> on the beach", box=(0.5, 0, 1, 1)))
        regional = replace(request, regions=regions)
        print(
            "regional two-concept request (<joe> in the left half, <rex> in the right half) ->",
            *save_pngs(client.generate(regional), work / "joe-left-rex-right.png"),
        )
        started = time.perf_counter()
        client.add_concept(ann, replace=True)
        figures["hot_load_ms"] = 1000 * (time.perf_counter() - started)
        used = client.generate(GenerationRequest("<ann> sleeping next to <rex>", steps=args.steps, seed=2))
        print(
            f"hot-loaded <ann> in {figures['hot_load_ms']:.1f} ms and used it ->",
            *save_pngs(used, work / "ann.png"),
        )
        runs = {
            "served": lambda: client.generate(request),
            "in_process_onnxruntime": lambda: ort.generate(request),
        }
        figures.update(timings(runs, args.requests))
        stages = [*folder.spec.text_encoder_names, UNET, VAE_DECODER]
        # Mean queue and compute ms per pipeline request at each model, over the server's life.
        figures["served_breakdown_ms"] = per_pipeline_request(difference({}, snapshot(client, (PIPELINE_MODEL, *stages))))

    bank = lora_sets_share_executions(base, work / "bank", args.steps)
    figures["lora_bank"] = bank
    print(
        f"two concept sets with different LoRA sets (<amy>, <ben>), requested concurrently on the tiny-bank "
        f"export: {bank['shared_executions']} of {bank['unet_bank_executions']} unet_bank executions held "
        f"samples of both (samples per execution: {bank['by_batch_size']})"
    )

    print(f"\nlatency of one {args.steps}-step 64x64 request (ms), {args.requests} requests after a warm-up:")
    for name in ("served", "in_process_onnxruntime"):
        row = figures[name]
        print(f"  {name:<24} p50 {row['p50']:8.1f}   p95 {row['p95']:8.1f}")
    figures["served_over_onnxruntime_p50"] = (
        figures["served"]["p50"] / figures["in_process_onnxruntime"]["p50"]
    )
    print(f"  served / in-process onnxruntime (p50): {figures['served_over_onnxruntime_p50']:.2f}")
    print("  where a served request's time goes (ms per request, from Triton's statistics):")
    for model, row in figures["served_breakdown_ms"].items():
        print(f"    {model:<14} queue {row['queue']:8.1f}   compute {row['compute']:8.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
