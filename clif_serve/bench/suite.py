"""The benchmark suite: per stage and end to end, served vs in process vs diffusers, concurrency,
mixed concepts, hot-load under load and the LoRA bank (clif_serve/bench/lora_bank.py, on a second
server serving a tiny-bank export) — all in one run, so ratios compare like with like.

Every goal is measured in `repetitions` (>= 3) rounds; within a round the pipelines being compared
take turns request by request, so a change in machine load hits them alike. A goal's figure is
the median of the rounds with their min-max range, and its verdict is "met" only when every round
meets it, "unclear" when some do, "not met" when none does (`verdict`).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
from tqdm import tqdm

from clif_serve.bench.baselines import diffusers_pipeline, stand_in_packs
from clif_serve.bench.environment import describe_environment
from clif_serve.bench.load import LoadResult, run_load
from clif_serve.bench.lora_bank import lora_sets_throughput, step_overhead
from clif_serve.bench.server_stats import difference, per_pipeline_request, snapshot, stage_call_overheads
from clif_serve.bench.stats import LatencySummary, spread
from clif_serve.bench.timed_executor import UNET_STEP, TimedExecutor
from clif_serve.concepts.create import new_pack
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.contract.folder import ExportFolder
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.contract.stages import UNET, VAE_DECODER
from clif_serve.errors import InputError
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.ort_executor import OrtExecutor
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
    repetitions: int = 3
    # The LoRA bank rows: a server at `bank_url` serving the tiny-bank export `bank_export`.
    lora_bank: bool = True
    bank_url: str | None = None
    bank_export: ExportFolder | None = None
    bank_steps: int = 30  # timed UNet steps per variant per repetition (in process)
    bank_clients: int = 8
    bank_requests: int = 3  # requests per client per phase

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


def _timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000


def end_to_end_rounds(config: BenchConfig, client: ClifClient, base, packs, progress: Progress) -> dict:
    """diffusers eager, the ORT pipeline (per-stage timed) and the served pipeline on the same request.

    `repetitions` rounds of `requests` requests each, the three taking turns request by request;
    per round the p50 of each. The server statistics between the first and the last served request
    give where a served request's time goes (`served_models`), the ORT stage timings the same in
    process (`ort_stage_ms_per_request`).
    """
    executor = TimedExecutor(OrtExecutor(config.export, OrtSettings()))
    ort = ConceptPipeline(executor, config.export.tokenizers(), ConceptRegistry(config.export.spec, packs))
    request = config.request()
    models = [PIPELINE_MODEL, *config.export.spec.text_encoder_names, UNET, VAE_DECODER]
    reference = diffusers_pipeline(base, packs)
    runs = {
        "diffusers": lambda: reference(
            request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
            generator=torch.Generator().manual_seed(request.seed), output_type="np",
        ),
        "ort": lambda: ort.generate(request),
        "served": lambda: client.generate(request),
    }
    for run in runs.values():
        for _ in range(config.warmup):
            run()
    executor.reset()
    progress.phase("end to end: diffusers / ORT / served", len(runs) * config.requests * config.repetitions)
    before = snapshot(client, models)
    rounds, pooled = [], {name: [] for name in runs}
    for _ in range(config.repetitions):
        samples = {name: [] for name in runs}
        marks = {stage: len(values) for stage, values in executor.samples.items()}
        round_start = snapshot(client, models)
        for _ in range(config.requests):
            for name, run in runs.items():
                samples[name].append(_timed(run))
                progress.tick()
        row = {name: LatencySummary.of(values).to_dict() for name, values in samples.items()}
        stages = {stage: values[marks.get(stage, 0):] for stage, values in executor.samples.items()}
        loop_ms = row["ort"]["mean"] - sum(sum(values) for values in stages.values()) / config.requests
        row["overheads"] = stage_call_overheads(
            difference(round_start, snapshot(client, models)), UNET, statistics.mean(stages[UNET_STEP]), loop_ms
        )
        rounds.append(row)
        for name, values in samples.items():
            pooled[name] += values
    served_models = difference(before, snapshot(client, models))
    timed = config.requests * config.repetitions
    return {
        "rounds": rounds,
        **{name: LatencySummary.of(values).to_dict() for name, values in pooled.items()},
        "ort_stages": {stage: LatencySummary.of(values).to_dict() for stage, values in executor.samples.items()},
        "ort_stage_ms_per_request": {stage: sum(values) / timed for stage, values in executor.samples.items()},
        "served_models": served_models,
        "served_ms_per_request": per_pipeline_request(served_models),
    }


def warm_up_server(config: BenchConfig) -> None:
    """Warm every pipeline instance: `warmup` requests from as many clients as the sweep's largest level.

    Each `clif_pipeline` instance initialises lazily on its first request; one client alone would
    warm only the instance that happens to take it.
    """
    clients = max(config.concurrency + (config.mixed_clients,))
    result = run_load(config.url, clients, lambda i, n: config.request(), config.warmup, config.max_seconds)
    if result.failures:
        raise RuntimeError(f"warm-up requests failed: {result.failures[:3]}")


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
    """`mixed_clients` clients naming different concepts vs all naming one, in interleaved rounds.

    Both do the same work (concept tables are per-sample inputs of a fixed shape, so the stage
    batches are alike: `server_batches` shows them), so the ratio measures noise unless the
    measurement is fair: the order alternates round by round (single first, then mixed first, ...),
    and throughput is the steady one (`LoadResult.steady_throughput`: no drain at the end).
    """
    names = [f"bench_mix{i}" for i in range(config.mixed_clients)]
    for name, word in zip(names, MIXED_WORDS * 8):
        client.add_concept(new_pack(base, name, word), replace=True)
    per_client = max(4, math.ceil(config.requests / config.mixed_clients))
    models = [*config.export.spec.text_encoder_names, UNET]
    results: dict[str, list[LoadResult]] = {"single": [], "mixed": []}
    batches: dict[str, dict] = {"single": {}, "mixed": {}}
    for round_index in range(config.repetitions):
        for kind in ("single", "mixed") if round_index % 2 == 0 else ("mixed", "single"):
            progress.phase(f"{kind} concepts x{config.mixed_clients}", config.mixed_clients * per_client)
            before = snapshot(client, models)

            def make(index: int, _number: int, kind=kind) -> GenerationRequest:
                return config.request(f"a photo of <{names[index if kind == 'mixed' else 0]}>")

            results[kind].append(
                run_load(config.url, config.mixed_clients, make, per_client, config.max_seconds, on_done=progress.tick)
            )
            for model, row in difference(before, snapshot(client, models)).items():
                merged = batches[kind].setdefault(model, {})
                for size, count in row["batches_by_size"].items():
                    merged[size] = merged.get(size, 0) + count
    throughput = {kind: sum(r.steady_throughput for r in runs) / len(runs) for kind, runs in results.items()}
    ratios = [
        mixed.steady_throughput / single.steady_throughput
        for single, mixed in zip(results["single"], results["mixed"], strict=True)
    ]
    return {
        "clients": config.mixed_clients,
        "throughput_rps": throughput,
        "ratio_mixed_over_single": ratios,
        "runs": {kind: [r.to_dict() for r in runs] for kind, runs in results.items()},
        "server_batches": batches,
    }


def hotload_rounds(config: BenchConfig, client: ClifClient, base, progress: Progress) -> list[dict]:
    """`repetitions` rounds of `hotload_under_load`."""
    return [hotload_under_load(config, client, base, progress, round_index) for round_index in range(config.repetitions)]


def hotload_under_load(config: BenchConfig, client: ClifClient, base, progress: Progress, round_index: int = 0) -> dict:
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
            pack = new_pack(base, f"bench_hot{round_index}_{index}", MIXED_WORDS[index % len(MIXED_WORDS)])
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


def verdict(values: list[float], op: str, target: float) -> str:
    """"met" when every round meets the target, "not met" when none does, else "unclear"."""
    meets = [value >= target if op == ">=" else value <= target for value in values]
    return "met" if all(meets) else "not met" if not any(meets) else "unclear"


def goal_row(goal: str, values: list[float], op: str, target: float) -> dict:
    """One goal: its per-round figures, their median and range, and the verdict."""
    return {
        "goal": goal,
        "rounds": values,
        **spread(values),
        "op": op,
        "target": target,
        "verdict": verdict(values, op, target),
    }


def goals(report: dict) -> list[dict]:
    """The suite's goals, each from every round: median, min-max and verdict."""
    rounds = report["end_to_end"]["rounds"]
    hot = report["hotload"]
    return [
        goal_row(
            "ORT pipeline >= 2x faster than diffusers eager (p50)",
            [r["diffusers"]["p50"] / r["ort"]["p50"] for r in rounds], ">=", 2.0,
        ),
        goal_row("served p50 <= 1.05x in-process ORT p50", [r["served"]["p50"] / r["ort"]["p50"] for r in rounds], "<=", 1.05),
        goal_row(
            "served UNet compute per call <= 1.05x the in-process call (same batch)",
            [r["overheads"]["unet_compute_over_in_process"] for r in rounds], "<=", 1.05,
        ),
        goal_row(
            "BLS + transport overhead per stage call <= 0.5 ms",
            [r["overheads"]["bls_overhead_per_stage_call_ms"] for r in rounds], "<=", 0.5,
        ),
        goal_row("hot-load p99 <= 50 ms (send pack -> usable)", [h["add_ms"]["p99"] for h in hot], "<=", 50.0),
        goal_row(
            "0 failed requests while hot-loading",
            [h["background"]["failed"] + len(h["first_image_failures"]) for h in hot], "<=", 0,
        ),
        goal_row(
            f"mixed-concept throughput >= 0.9x single at concurrency {report['mixed']['clients']}",
            report["mixed"]["ratio_mixed_over_single"], ">=", 0.9,
        ),
        *lora_bank_goals(report.get("lora_bank")),
    ]


def lora_bank_goals(bank: dict | None) -> list[dict]:
    """The LoRA bank's two goals (none when the bank was not measured)."""
    if bank is None:
        return []
    step, served = bank["step"]["repetitions"], bank["served"]
    return [
        goal_row(
            "LoRA bank step <= 1.15x a merged-LoRA UNet step at batch 2 (tiny, worse of one / two sets)",
            [max(r["ratio_one_set"], r["ratio_two_sets"]) for r in step], "<=", 1.15,
        ),
        goal_row(
            f"{served['clients']} clients with {served['clients']} LoRA sets >= 0.9x the throughput of one set (tiny-bank)",
            served["ratio_many_over_single"], ">=", 0.9,
        ),
    ]


def lora_bank_rounds(config: BenchConfig, progress: Progress) -> dict:
    """The bank's per-step overhead in process and its served throughput with many LoRA sets vs one."""
    progress.phase("LoRA bank: step overhead (in process)", 0)
    step = step_overhead(config.bank_export, config.repetitions, config.bank_steps, config.warmup)
    progress.phase(f"LoRA bank: {config.bank_clients} sets vs 1", 2 * config.repetitions * config.bank_clients * config.bank_requests)
    served = lora_sets_throughput(
        config.bank_url, config.bank_export, config.bank_clients, config.bank_requests, config.steps,
        config.repetitions, config.max_seconds, on_done=progress.tick,
    )
    return {"export": str(config.bank_export.root), "step": step, "served": served}


def run_suite(config: BenchConfig) -> dict:
    """Every measurement, in a fixed order, against the server at `config.url` (and the bank's at
    `config.bank_url`)."""
    if config.lora_bank and (config.bank_url is None or config.bank_export is None):
        raise InputError("bank_url", "the LoRA bank rows need bank_url and bank_export (a served tiny-bank export)")
    base = load_base_model(config.model)
    packs = stand_in_packs(base, PAIR)
    progress = Progress()
    with ClifClient(config.url) as client:
        for pack in packs:
            client.add_concept(pack, replace=True)
        warm_up_server(config)
        report = {
            "config": {f.name: getattr(config, f.name) for f in fields(config) if not f.name.endswith("export")}
            | {"export": str(config.export.root)},
            "environment": describe_environment({"ort_settings": asdict(OrtSettings())}),
            "end_to_end": end_to_end_rounds(config, client, base, packs, progress),
            "concurrency": concurrency_sweep(config, progress),
            "mixed": mixed_vs_single(config, client, base, progress),
            "hotload": hotload_rounds(config, client, base, progress),
        }
    if config.lora_bank:
        report["lora_bank"] = lora_bank_rounds(config, progress)
    progress.bar.close()
    report["goals"] = goals(report)
    return report
