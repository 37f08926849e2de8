"""Where a served request's time goes, and how repository settings change it: several servers at once.

Each variant is a `RepoOptions` (threads per stage, pipeline instances, queue delays) served by its
own tritonserver from the same export; all of them run at the same time and take turns round by
round with the in-process ONNX Runtime pipeline, so machine load hits them alike and the ratios
come from one run. Per round and variant:

* one client: served p50 / in-process p50, and per UNet call the served stage's compute (Triton's
  `compute_infer` per execution) / the in-process call at the same batch and threads;
* the BLS + transport overhead per stage call: the served pipeline's compute per request, less the
  stage requests' whole time at the server (queue + compute) and less the in-process loop's own
  time (its mean request less its stage calls), divided by the stage calls per request;
* `clients` clients: steady throughput (`LoadResult.steady_throughput`) with all clients naming one concept and each naming its own.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from clif_serve.bench.baselines import stand_in_packs
from clif_serve.bench.load import run_load
from clif_serve.bench.server_stats import difference, snapshot, stage_call_overheads
from clif_serve.bench.stats import spread
from clif_serve.bench.suite import MIXED_WORDS, PAIR, PROMPT
from clif_serve.bench.timed_executor import UNET_STEP, TimedExecutor
from clif_serve.concepts.create import new_pack
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.contract.folder import ExportFolder
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.contract.stages import UNET, VAE_DECODER
from clif_serve.models.loading import BaseModel
from clif_serve.runtime.ort_executor import OrtExecutor
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.launcher import Ports, TritonServer
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.protocol import PIPELINE_MODEL
from clif_serve.serving.repository import build_repository

# Several servers start at once on a shared 2-core machine: their stubs can take minutes.
START_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Variant:
    """A named repository setting to serve and measure."""

    name: str
    options: RepoOptions

    def describe(self) -> dict:
        options = self.options
        return {
            "pipeline_instances": options.pipeline_instances,
            "stage_instances": options.stage_instances,
            "intra_op_threads": options.models.intra_op_threads,
            "ort_spinning": options.models.ort_spinning,
            "text_encoder_delay_us": options.text_encoder_delay_us,
            "unet_delay_us": options.unet_delay_us,
        }


@dataclass(frozen=True)
class OverheadConfig:
    """How much to measure: per round `requests` one-client requests and `clients` x `per_client` load."""

    steps: int = 20
    requests: int = 10
    clients: int = 8
    per_client: int = 3
    rounds: int = 3
    warmup: int = 2
    max_seconds: float = 180.0

    def request(self, prompt: str = PROMPT) -> GenerationRequest:
        return GenerationRequest(prompt, steps=self.steps, seed=0)


@contextmanager
def serve_variants(export: ExportFolder, variants: Sequence[Variant], workdir: Path) -> Iterator[dict[str, str]]:
    """Every variant served at once (its own repository, store and ports); variant name -> gRPC URL."""
    with ExitStack() as stack:
        urls = {}
        for variant in variants:
            folder = workdir / variant.name
            repo = build_repository(export.root, folder / "repo", variant.options, overwrite=True)
            server = TritonServer(repo, Ports.free_on_loopback(), concept_store=folder / "concepts", log_file=folder / "server.log")
            stack.callback(server.stop)
            server.start(timeout_s=START_TIMEOUT_S)
            urls[variant.name] = server.grpc_url
        yield urls


def _p50(values: list[float]) -> float:
    return float(statistics.median(values))


class _InProcess:
    """The in-process ORT pipeline (per-stage timed) at one thread setting."""

    def __init__(self, export: ExportFolder, packs, settings: OrtSettings):
        self.executor = TimedExecutor(OrtExecutor(export, settings))
        self.pipeline = ConceptPipeline(self.executor, export.tokenizers(), ConceptRegistry(export.spec, packs))

    def run(self, request: GenerationRequest, count: int) -> dict:
        """p50 of `count` requests, the mean UNet call (Triton reports served stages' means) and the loop's own
        time (the mean request less its stage calls)."""
        self.executor.reset()
        totals = []
        for _ in range(count):
            started = time.perf_counter()
            self.pipeline.generate(request)
            totals.append((time.perf_counter() - started) * 1000)
        stage_ms = sum(sum(values) for values in self.executor.samples.values()) / count
        return {
            "p50_ms": _p50(totals),
            "unet_call_mean_ms": statistics.mean(self.executor.samples[UNET_STEP]),
            "loop_ms": max(0.0, statistics.mean(totals) - stage_ms),
        }


def _served_one_client(url: str, config: OverheadConfig, export: ExportFolder, reference: dict) -> dict:
    models = [PIPELINE_MODEL, *export.spec.text_encoder_names, UNET, VAE_DECODER]
    request = config.request()
    with ClifClient(url) as client:
        before = snapshot(client, models)
        totals = []
        for _ in range(config.requests):
            started = time.perf_counter()
            client.generate(request)
            totals.append((time.perf_counter() - started) * 1000)
        figures = difference(before, snapshot(client, models))
    overheads = stage_call_overheads(figures, UNET, reference["unet_call_mean_ms"], reference["loop_ms"])
    return {"p50_ms": _p50(totals), **overheads, "unet_batches": figures[UNET]["batches_by_size"]}


def _throughput(url: str, config: OverheadConfig, names: Sequence[str], mixed: bool) -> dict:
    def make(index: int, _number: int) -> GenerationRequest:
        return config.request(f"a photo of <{names[index if mixed else 0]}>")

    with ClifClient(url) as client:
        before = snapshot(client, [UNET])
        result = run_load(url, config.clients, make, config.per_client, config.max_seconds)
        batches = difference(before, snapshot(client, [UNET]))[UNET]["batches_by_size"]
    if result.failures:
        raise RuntimeError(f"load requests failed: {result.failures[:3]}")
    return {"throughput_rps": result.steady_throughput, "unet_batches": batches}


def measure(
    export: ExportFolder, base: BaseModel, variants: Sequence[Variant], config: OverheadConfig, workdir: Path
) -> dict:
    """Every variant and the in-process pipeline, `config.rounds` interleaved rounds (see the module docstring)."""
    packs = stand_in_packs(base, PAIR)
    names = [f"bench_mix{i}" for i in range(config.clients)]
    mixed_packs = [new_pack(base, name, word) for name, word in zip(names, MIXED_WORDS * 8)]
    # One in-process reference per onnxruntime setting among the variants (threads, spinning).
    in_process = {s: _InProcess(export, packs, s) for s in dict.fromkeys(v.options.models.ort_settings() for v in variants)}
    rounds: list[dict] = []
    with serve_variants(export, variants, workdir) as urls:
        for url in urls.values():
            with ClifClient(url) as client:
                for pack in [*packs, *mixed_packs]:
                    client.add_concept(pack, replace=True)
            run_load(url, config.clients, lambda i, n: config.request(), config.warmup, config.max_seconds)
        for runner in in_process.values():
            runner.run(config.request(), config.warmup)
        for _ in range(config.rounds):
            ort = {t: runner.run(config.request(), config.requests) for t, runner in in_process.items()}
            row = {"in_process": {f"{s.intra_op_threads} threads, spinning {s.spinning}": f for s, f in ort.items()}, "variants": {}}
            for variant in variants:
                url = urls[variant.name]
                reference = ort[variant.options.models.ort_settings()]
                served = _served_one_client(url, config, export, reference)
                single = _throughput(url, config, names, mixed=False)
                mixed = _throughput(url, config, names, mixed=True)
                row["variants"][variant.name] = {
                    "served": served,
                    "single": single,
                    "mixed": mixed,
                    "served_over_in_process_p50": served["p50_ms"] / reference["p50_ms"],
                    "unet_compute_over_in_process": served["unet_compute_over_in_process"],
                    "bls_overhead_per_stage_call_ms": served["bls_overhead_per_stage_call_ms"],
                    "mixed_over_single": mixed["throughput_rps"] / single["throughput_rps"],
                }
            rounds.append(row)
    return {
        "config": asdict(config),
        "variants": {v.name: v.describe() for v in variants},
        "rounds": rounds,
        "summary": summarise(rounds, [v.name for v in variants]),
    }


RATIOS = (
    "served_over_in_process_p50",
    "unet_compute_over_in_process",
    "bls_overhead_per_stage_call_ms",
    "mixed_over_single",
)


def summarise(rounds: list[dict], names: Sequence[str]) -> dict:
    """Per variant, each ratio's median and min-max over the rounds, and the throughputs' medians."""
    summary = {}
    for name in names:
        rows = [r["variants"][name] for r in rounds]
        figures = {}
        for key in RATIOS:
            figures[key] = spread([row[key] for row in rows])
        for kind in ("single", "mixed"):
            figures[f"{kind}_throughput_rps"] = spread([row[kind]["throughput_rps"] for row in rows])
        figures["served_p50_ms"] = spread([row["served"]["p50_ms"] for row in rows])
        summary[name] = figures
    return summary


def summary_table(report: dict) -> str:
    """The summary as a markdown table (median, [min - max] over rounds)."""
    header = ["variant", *report["variants"][next(iter(report["variants"]))].keys(), "served p50 ms", *RATIOS, "single rps", "mixed rps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, settings in report["variants"].items():
        figures = report["summary"][name]
        cells = [name, *(str(v) for v in settings.values())]
        for key in ("served_p50_ms", *RATIOS, "single_throughput_rps", "mixed_throughput_rps"):
            f = figures[key]
            cells.append(f"{f['median']:.3g} [{f['min']:.3g} - {f['max']:.3g}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
