"""The LoRA bank's two measurements on a `tiny-bank` export, each in interleaved repetitions.

* `step_overhead`: one UNet step at batch 2 in process (ONNX Runtime) on `unet` (a merged LoRA costs
  what the plain UNet costs: same graph, other weights) vs `unet_bank` with both samples in one slot
  and in two different slots. Per repetition the three take turns step by step; the ratio is of
  their medians.
* `lora_sets_throughput`: a served tiny-bank export, `clients` closed-loop clients each with its own
  LoRA set vs all with one set (steady throughput), the order alternating repetition by repetition,
  with `unet_bank`'s executions by batch size from Triton's statistics.

Used by `clif-serve bench` (clif_serve/bench/suite.py) and by benchmarks/lora_bank.py.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnxruntime as ort

from clif_serve.bench.baselines import stand_in_lora
from clif_serve.bench.load import LoadResult, run_load
from clif_serve.bench.server_stats import difference, snapshot
from clif_serve.concepts.create import new_pack
from clif_serve.contract.folder import ExportFolder
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.contract.stages import UNET, UNET_BANK
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.resident_bank import ResidentBank
from clif_serve.serving.client import ClifClient
from clif_serve.serving.options import RepoOptions

BANK_MODEL, BANK_RECIPE = "tiny", "tiny-bank"
MERGED, ONE_SET, TWO_SETS = "unet (merged LoRA)", "unet_bank, one set", "unet_bank, two sets"
MANY_SETS, SINGLE_SET = "one LoRA set per client", "one LoRA set for all"


def bank_repo_options(clients: int) -> RepoOptions:
    """The bank server's repository: one pipeline instance per client, and queue delays that let the
    clients' steps meet in one unet_bank execution on a busy CPU."""
    return RepoOptions(pipeline_instances=clients, text_encoder_delay_us=20_000, unet_delay_us=4_000)


def interleaved_medians(calls: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, float]:
    """Median ms of each call over `rounds` rounds (after `warmup`), the calls taking turns each round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(values) * 1000, 3) for name, values in times.items()}


def step_overhead(export: ExportFolder, repetitions: int, rounds: int, warmup: int) -> dict:
    """Per repetition: median ms of one batch-2 step of `unet` and of `unet_bank` (one set, two sets),
    and the bank / merged ratios."""
    deployment = export.deployment
    base = load_base_model(BANK_MODEL)
    options = OrtSettings().session_options()
    sessions = {stage: ort.InferenceSession(str(export.onnx_path(stage)), options) for stage in (UNET, UNET_BANK)}
    resident = ResidentBank(deployment.spec, deployment.bank_slots, deployment.bank_rank)
    for slot in (1, 2):
        resident.bank.fill(slot, stand_in_lora(base, seed=slot, rank=deployment.bank_rank, scale=0.1))
    generator = np.random.default_rng(0)
    side = deployment.height.opt // deployment.spec.vae_scale_factor
    hidden = sum(encoder.hidden_size for encoder in deployment.spec.text_encoders)  # the UNet's context width
    feed = {
        "sample": generator.standard_normal((2, deployment.spec.latent_channels, side, side), np.float32),
        "timestep": np.array([500.0, 500.0], np.float32),
        "encoder_hidden_states": generator.standard_normal((2, deployment.spec.max_length, hidden), np.float32),
    }

    def bank_step(slots: list[int]) -> Callable[[], object]:
        values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in feed.items()}
        values["lora_slot"] = ort.OrtValue.ortvalue_from_numpy(np.array(slots, np.int64))
        return lambda: sessions[UNET_BANK].run_with_ort_values(["noise_pred"], values | resident.values)

    calls = {
        MERGED: lambda: sessions[UNET].run(["noise_pred"], feed),
        ONE_SET: bank_step([1, 1]),
        TWO_SETS: bank_step([1, 2]),
    }
    repeats = []
    for _ in range(repetitions):
        medians = interleaved_medians(calls, rounds, warmup)
        repeats.append({
            "median_ms": medians,
            "ratio_one_set": medians[ONE_SET] / medians[MERGED],
            "ratio_two_sets": medians[TWO_SETS] / medians[MERGED],
        })
    return {
        "bank": {"slots": deployment.bank_slots, "rank": deployment.bank_rank},
        "rounds_per_repetition": rounds,
        "repetitions": repeats,
    }


def lora_sets_throughput(
    url: str, export: ExportFolder, clients: int, requests_per_client: int, steps: int, repetitions: int,
    max_seconds: float, on_done: Callable[[], None] | None = None,
) -> dict:
    """Against the server at `url` (serving the tiny-bank `export`): per repetition the steady throughput
    of `clients` clients each naming a concept with its own LoRA set vs all naming one, and the ratio."""
    base = load_base_model(BANK_MODEL)
    if clients > export.deployment.bank_slots:
        raise ValueError(f"{clients} clients need {clients} bank slots; the export has {export.deployment.bank_slots}")
    names = [f"bench_set{i}" for i in range(clients)]
    rank = export.deployment.bank_rank
    with ClifClient(url) as client:
        for index, name in enumerate(names):
            lora = stand_in_lora(base, seed=100 + index, rank=rank, scale=0.1)
            client.add_concept(replace(new_pack(base, name, "dog"), lora=lora), replace=True)
        makers = {
            MANY_SETS: lambda i, n: GenerationRequest(f"a photo of <{names[i]}>", steps=steps, seed=n),
            SINGLE_SET: lambda i, n: GenerationRequest(f"a photo of <{names[0]}>", steps=steps, seed=n),
        }
        warm = run_load(url, clients, makers[MANY_SETS], 1, max_seconds)  # every set into its slot
        if warm.failures:
            raise RuntimeError(f"warm-up requests failed: {warm.failures[:3]}")
        results: dict[str, list[LoadResult]] = {MANY_SETS: [], SINGLE_SET: []}
        batches: dict[str, dict] = {MANY_SETS: {}, SINGLE_SET: {}}
        for index in range(repetitions):
            for kind in (SINGLE_SET, MANY_SETS) if index % 2 == 0 else (MANY_SETS, SINGLE_SET):
                before = snapshot(client, [UNET_BANK])
                results[kind].append(
                    run_load(url, clients, makers[kind], requests_per_client, max_seconds, on_done=on_done)
                )
                for size, count in difference(before, snapshot(client, [UNET_BANK]))[UNET_BANK]["batches_by_size"].items():
                    batches[kind][size] = batches[kind].get(size, 0) + count
    return {
        "clients": clients,
        "steps": steps,
        "requests_per_client": requests_per_client,
        "ratio_many_over_single": [
            many.steady_throughput / single.steady_throughput
            for many, single in zip(results[MANY_SETS], results[SINGLE_SET], strict=True)
        ],
        "runs": {kind: [r.to_dict() for r in runs] for kind, runs in results.items()},
        "unet_bank_batches": batches,
    }
