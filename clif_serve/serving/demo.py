"""The served flow end to end on the embedded `tiny` model, with a latency summary.

    python -m clif_serve.serving.demo [--workdir DIR] [--steps 20] [--requests 10] [--json FILE]

build tiny -> export -> model repository -> tritonserver -> hot-load two concepts -> one
multi-concept gRPC request -> hot-load a third concept and use it -> latency of served requests
against the same requests in process (the ONNX Runtime executor on the same ONNX files, same
seed and concepts; `--threads` sets onnxruntime's intra-op threads on both sides) -> where the
served time goes (Triton's statistics) -> stop the server. The concepts are new packs
initialised from class words (no training), which is enough to show the mechanics.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from clif_serve.concepts.create import new_pack
from clif_serve.export.exporter import export_model
from clif_serve.export.layout import MANIFEST, UNET_STAGE, VAE_DECODER_STAGE, open_export
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.factory import ort_pipeline
from clif_serve.runtime.images import save_pngs
from clif_serve.runtime.ort_executor import OrtSettings
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.launcher import Ports, TritonServer
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.protocol import PIPELINE_MODEL
from clif_serve.serving.repository import build_repository


def timings(runs: dict[str, Callable[[], object]], count: int) -> dict[str, dict[str, float]]:
    """Milliseconds per call of each run after one warm-up call each: p50, p95 (nearest rank), mean.

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
    summary = {}
    for name, values in samples.items():
        ordered = sorted(values)
        summary[name] = {
            "p50_ms": statistics.median(ordered),
            "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "mean_ms": statistics.fmean(ordered),
            "count": count,
        }
    return summary


def breakdown(client: ClifClient, stages: list[str]) -> dict[str, dict[str, float]]:
    """Mean queue and compute milliseconds per pipeline request, per model, over the server's life."""
    requests = int(client.statistics(PIPELINE_MODEL)["inference_stats"]["success"]["count"])
    rows = {}
    for model in (PIPELINE_MODEL, *stages):
        stats = client.statistics(model)["inference_stats"]
        rows[model] = {
            kind: int(stats[key].get("ns", 0)) / 1e6 / requests
            for kind, key in (("queue", "queue"), ("compute", "compute_infer"))
        }
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m clif_serve.serving.demo", description=__doc__.split("\n\n")[0]
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
    export_dir = work / "export"
    started = time.perf_counter()
    folder = (
        open_export(export_dir) if (export_dir / MANIFEST).is_file() else export_model("tiny", export_dir)
    )
    figures["export_s"] = time.perf_counter() - started
    repo = build_repository(
        folder.root, work / "repo", RepoOptions(intra_op_threads=args.threads), overwrite=True
    )
    joe, rex, ann = (
        new_pack(base, name, word) for name, word in (("joe", "person"), ("rex", "dog"), ("ann", "cat"))
    )

    packs = (joe, rex, ann)
    ort = ort_pipeline(folder.root, packs, OrtSettings(intra_op_threads=args.threads))
    started = time.perf_counter()
    server = TritonServer(
        repo, Ports.free_on_loopback(), concept_store=work / "concepts", log_file=work / "server.log"
    )
    with server, ClifClient(server.grpc_url) as client:
        figures["server_ready_s"] = time.perf_counter() - started
        print(
            f"server ready in {figures['server_ready_s']:.1f} s at {server.grpc_url} (log: {work / 'server.log'})"
        )
        for pack in (joe, rex):
            client.add_concept(pack, replace=True)
        request = GenerationRequest("a photo of <joe> walking <rex> on the beach", steps=args.steps, seed=1)
        print("multi-concept request ->", *save_pngs(client.generate(request), work / "joe-and-rex.png"))
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
        stages = [*folder.spec.text_encoder_names, UNET_STAGE, VAE_DECODER_STAGE]
        figures["served_breakdown_ms"] = breakdown(client, stages)

    print(f"\nlatency of one {args.steps}-step 64x64 request (ms), {args.requests} requests after a warm-up:")
    for name in ("served", "in_process_onnxruntime"):
        row = figures[name]
        print(f"  {name:<24} p50 {row['p50_ms']:8.1f}   p95 {row['p95_ms']:8.1f}")
    figures["served_over_onnxruntime_p50"] = (
        figures["served"]["p50_ms"] / figures["in_process_onnxruntime"]["p50_ms"]
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
