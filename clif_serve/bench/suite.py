"""The benchmark suite: per stage and end to end, served vs in process vs diffusers, concurrency,
mixed concepts, and hot-load under load — all in one run, so ratios compare like with like."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
from tqdm import tqdm

from clif_serve.bench.baselines import diffusers_pipeline, stand_in_packs
from clif_serve.bench.environment import describe_environment
from clif_serve.bench.load import LoadResult, run_load
from clif_serve.bench.server_stats import difference, snapshot
from clif_serve.bench.stats import LatencySummary
from clif_serve.bench.timed_executor import TimedExecutor
from clif_serve.concepts.create import new_pack
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.contract.folder import ExportFolder
from clif_serve.contract.stages import UNET, VAE_DECODER
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.ort_executor import OrtExecutor, OrtSettings
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.protocol import PIPELINE_MODEL

# Concept names carry a prefix so a benchmark never replaces a user's concepts of the same name.
PAIR = (("bench_joe", "person"), ("bench_rex", "dog"))
PROMPT = "a photo of <bench_joe> and <bench_rex> on the beach"
# Class words that are single tokens of the tiny vocabulary (and of the real CLIP one).
MIXED_WORDS = ("person", "dog", "cat", "mug", "car", "cup", "toy", "woman")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how much; every load run is bounded by `max_seconds` and by count."""

    url: str
    export: ExportFolder
    model: str = "tiny"
    steps: int = 20
    warmup: int = 3
    requests: int = 20
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    mixed_clients: int = 8
    hotloads: int = 20
    hotload_clients: int = 4
    max_seconds: float = 180.0
    seed: int = 0

    def request(self, prompt: str = PROMPT, seed: int | None = None) -> GenerationRequest:
        return GenerationRequest(prompt, steps=self.steps, seed=self.seed if seed is None else seed)


@dataclass
class Progress:
    """One progress bar over every timed request of the suite."""

    bar: tqdm = field(default_factory=lambda: tqdm(desc="bench", unit="req"))

    def phase(self, name: str, requests: int) -> None:
        self.bar.set_postfix_str(name)
        self.bar.total = (self.bar.total or 0) + requests
        self.bar.refresh()

    def tick(self) -> None:
        self.bar.update(1)


def _timed_requests(run: Callable[[], object], warmup: int, count: int, progress: Progress) -> LatencySummary:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000)
        progress.tick()
    return LatencySummary.of(samples)


def in_process(config: BenchConfig, base, packs, progress: Progress) -> dict:
    """ORT pipeline (with per-stage timing) and diffusers eager on the same request, in this process."""
    executor = TimedExecutor(OrtExecutor(config.export, OrtSettings()))
    ort = ConceptPipeline(executor, config.export.tokenizers(), ConceptRegistry(config.export.spec, packs))
    request = config.request()
    progress.phase("in-process ORT / diffusers", 2 * config.requests)
    reference = diffusers_pipeline(base, packs)
    diffusers_ms = _timed_requests(
        lambda: reference(
            request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
            generator=torch.Generator().manual_seed(request.seed), output_type="np",
        ),
        config.warmup, config.requests, progress,
    )
    for _ in range(config.warmup):
        ort.generate(request)
    executor.reset()
    ort_ms = _timed_requests(lambda: ort.generate(request), 0, config.requests, progress)
    stages = {stage: LatencySummary.of(samples).to_dict() for stage, samples in executor.samples.items()}
    return {"ort": ort_ms.to_dict(), "diffusers": diffusers_ms.to_dict(), "ort_stages": stages}


def warm_up_server(config: BenchConfig) -> None:
    """Warm every pipeline instance: `warmup` requests from as many clients as the sweep's largest level.

    Each `clif_pipeline` instance initialises lazily on its first request; one client alone would
    warm only the instance that happens to take it.
    """
    clients = max(config.concurrency + (config.mixed_clients,))
    result = run_load(config.url, clients, lambda i, n: config.request(), config.warmup, config.max_seconds)
    if result.failures:
        raise RuntimeError(f"warm-up requests failed: {result.failures[:3]}")


def served_single(config: BenchConfig, client: ClifClient, progress: Progress) -> dict:
    """Served end to end at concurrency 1, with the per-model server statistics in between."""
    request = config.request()
    models = [PIPELINE_MODEL, *config.export.spec.text_encoder_names, UNET, VAE_DECODER]
    progress.phase("served, one client", config.requests)
    before = snapshot(client, models)
    latency = _timed_requests(lambda: client.generate(request), 0, config.requests, progress)
    return {"latency_ms": latency.to_dict(), "server_models": difference(before, snapshot(client, models))}


def concurrency_sweep(config: BenchConfig, progress: Progress) -> list[dict]:
    """Throughput and latency at each concurrency level (same request from every client)."""
    rows = []
    for clients in config.concurrency:
        per_client = max(2, math.ceil(config.requests / clients))
        progress.phase(f"concurrency {clients}", clients * per_client)
        result = run_load(
            config.url, clients, lambda i, n: config.request(), per_client, config.max_seconds, on_done=progress.tick
        )
        rows.append(result.to_dict())
    return rows


def mixed_vs_single(config: BenchConfig, client: ClifClient, base, progress: Progress) -> dict:
    """`mixed_clients` clients naming different concepts vs all naming one; rounds interleaved."""
    names = [f"bench_mix{i}" for i in range(config.mixed_clients)]
    for name, word in zip(names, MIXED_WORDS * 8):
        client.add_concept(new_pack(base, name, word), replace=True)
    per_client = max(2, math.ceil(config.requests / config.mixed_clients))
    models = [*config.export.spec.text_encoder_names, UNET]
    results: dict[str, list[LoadResult]] = {"single": [], "mixed": []}
    batches: dict[str, dict] = {}
    for _round in range(2):
        for kind in ("single", "mixed"):
            progress.phase(f"{kind} concepts x{config.mixed_clients}", config.mixed_clients * per_client)
            before = snapshot(client, models)

            def make(index: int, _number: int, kind=kind) -> GenerationRequest:
                return config.request(f"a photo of <{names[index if kind == 'mixed' else 0]}>")

            results[kind].append(
                run_load(config.url, config.mixed_clients, make, per_client, config.max_seconds, on_done=progress.tick)
            )
            batches[kind] = difference(before, snapshot(client, models))
    throughput = {kind: sum(r.throughput for r in runs) / len(runs) for kind, runs in results.items()}
    return {
        "clients": config.mixed_clients,
        "throughput_rps": throughput,
        "ratio_mixed_over_single": throughput["mixed"] / throughput["single"],
        "runs": {kind: [r.to_dict() for r in runs] for kind, runs in results.items()},
        "server_batches_last_round": batches,
    }


def hotload_under_load(config: BenchConfig, client: ClifClient, base, progress: Progress) -> dict:
    """Hot-load and remove concepts one by one while `hotload_clients` clients generate continuously."""
    stop = threading.Event()
    background: dict[str, LoadResult] = {}
    load = threading.Thread(
        target=lambda: background.setdefault(
            "result",
            run_load(config.url, config.hotload_clients, lambda i, n: config.request(), 10_000, config.max_seconds, stop),
        ),
        daemon=True,
    )
    progress.phase(f"hot-load x{config.hotloads} under load", config.hotloads)
    load.start()
    add_ms, first_image_ms, remove_ms, first_image_failures = [], [], [], []
    try:
        for index in range(config.hotloads):
            pack = new_pack(base, f"bench_hot{index}", MIXED_WORDS[index % len(MIXED_WORDS)])
            start = time.perf_counter()
            client.add_concept(pack, replace=True)
            added = time.perf_counter()
            try:
                client.generate(config.request(f"a photo of <{pack.name}>"))
            except Exception as exc:  # a hot-loaded concept the next request cannot use is a failure to report
                first_image_failures.append(f"{type(exc).__name__}: {exc}")
            imaged = time.perf_counter()
            client.remove_concept(pack.name)
            removed = time.perf_counter()
            add_ms.append((added - start) * 1000)
            first_image_ms.append((imaged - start) * 1000)
            remove_ms.append((removed - imaged) * 1000)
            progress.tick()
    finally:
        stop.set()
        load.join()
    result = background["result"]
    return {
        "hotloads": config.hotloads,
        "background_clients": config.hotload_clients,
        "add_ms": LatencySummary.of(add_ms).to_dict(),
        "send_to_first_image_ms": LatencySummary.of(first_image_ms).to_dict(),
        "remove_ms": LatencySummary.of(remove_ms).to_dict(),
        "first_image_failures": first_image_failures,
        "background": result.to_dict(),
    }


def goals(report: dict) -> list[dict]:
    """The suite's goals, each with the measured figure and met / not met."""
    inproc, served = report["in_process"], report["served"]
    rows = [
        ("ORT pipeline >= 2x faster than diffusers eager (p50)", inproc["diffusers"]["p50"] / inproc["ort"]["p50"], ">=", 2.0),
        ("served p50 <= 1.10x in-process ORT p50", served["latency_ms"]["p50"] / inproc["ort"]["p50"], "<=", 1.10),
        ("hot-load p99 <= 50 ms (send pack -> usable)", report["hotload"]["add_ms"]["p99"], "<=", 50.0),
        (
            "0 failed requests while hot-loading",
            report["hotload"]["background"]["failed"] + len(report["hotload"]["first_image_failures"]),
            "<=",
            0,
        ),
        ("mixed-concept throughput >= 0.9x single at concurrency 8", report["mixed"]["ratio_mixed_over_single"], ">=", 0.9),
    ]
    return [
        {"goal": goal, "measured": value, "target": f"{op} {target}", "met": value >= target if op == ">=" else value <= target}
        for goal, value, op, target in rows
    ]


def run_suite(config: BenchConfig) -> dict:
    """Every measurement, in a fixed order, against the server at `config.url`."""
    base = load_base_model(config.model)
    packs = stand_in_packs(base, PAIR)
    progress = Progress()
    with ClifClient(config.url) as client:
        for pack in packs:
            client.add_concept(pack, replace=True)
        warm_up_server(config)
        report = {
            "config": {f.name: getattr(config, f.name) for f in fields(config) if f.name != "export"}
            | {"export": str(config.export.root)},
            "environment": describe_environment({"ort_settings": asdict(OrtSettings())}),
            "in_process": in_process(config, base, packs, progress),
            "served": served_single(config, client, progress),
            "concurrency": concurrency_sweep(config, progress),
            "mixed": mixed_vs_single(config, client, base, progress),
            "hotload": hotload_under_load(config, client, base, progress),
        }
    progress.bar.close()
    report["goals"] = goals(report)
    return report
