"""Per-model figures from Triton's inference statistics, as differences between two snapshots.

Triton counts two things per model: `inference_count` (samples, batch elements) and the
`success` / `queue` / `compute_infer` durations (one per request). A pipeline request's stage
time is therefore a stage's *request* total divided by the pipeline's request count
(`per_pipeline_request`), never a mean multiplied by samples.
"""

from __future__ import annotations

from collections.abc import Iterable

from clif_serve.serving.client import ClifClient
from clif_serve.serving.protocol import PIPELINE_MODEL


def snapshot(client: ClifClient, models: Iterable[str]) -> dict[str, dict]:
    """The statistics of each model right now."""
    return {model: client.statistics(model) for model in models}


def _ns(stats: dict, key: str) -> tuple[int, int]:
    entry = stats.get("inference_stats", {}).get(key, {})
    return int(entry.get("count", 0)), int(entry.get("ns", 0))


def _batch_sizes(stats: dict) -> dict[int, int]:
    return {int(entry["batch_size"]): int(entry["compute_infer"]["count"]) for entry in stats.get("batch_stats", [])}


def difference(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Per model, between two snapshots: samples (`requests`), executions, and per kind (success, queue,
    compute_infer) the request count, mean and total ms; plus the batch-size histogram."""
    figures = {}
    for model, now in after.items():
        then = before.get(model, {})
        requests = int(now.get("inference_count", 0)) - int(then.get("inference_count", 0))
        executions = int(now.get("execution_count", 0)) - int(then.get("execution_count", 0))
        row = {"requests": requests, "executions": executions}
        for key in ("success", "queue", "compute_infer"):
            count = _ns(now, key)[0] - _ns(then, key)[0]
            total = _ns(now, key)[1] - _ns(then, key)[1]
            row[f"{key}_count"] = count
            row[f"{key}_mean_ms"] = total / count / 1e6 if count else None
            row[f"{key}_total_ms"] = total / 1e6
        earlier = _batch_sizes(then)
        row["batches_by_size"] = {
            size: count - earlier.get(size, 0)
            for size, count in sorted(_batch_sizes(now).items())
            if count - earlier.get(size, 0)
        }
        figures[model] = row
    return figures


def per_pipeline_request(figures: dict[str, dict], pipeline: str = PIPELINE_MODEL) -> dict[str, dict[str, float]]:
    """Mean ms per pipeline request spent queued, computing and in all (success) at each model."""
    requests = figures[pipeline]["success_count"]
    if not requests:
        raise ValueError(f"no successful {pipeline} request between the snapshots")
    return {
        model: {
            "queue": row["queue_total_ms"] / requests,
            "compute": row["compute_infer_total_ms"] / requests,
            "total": row["success_total_ms"] / requests,
        }
        for model, row in figures.items()
    }


def stage_call_overheads(
    figures: dict[str, dict], unet: str, in_process_unet_ms: float, in_process_loop_ms: float, pipeline: str = PIPELINE_MODEL
) -> dict[str, float]:
    """What serving adds per stage call, from one window of one-client requests.

    `unet_compute_over_in_process`: the UNet stage's mean compute per execution / the in-process UNet
    call at the same batch (`in_process_unet_ms`: its mean too, as Triton's statistics are sums).
    `bls_overhead_per_stage_call_ms`: the pipeline model's compute per request, less its stage
    requests' whole time at the server (queue + compute) and less the in-process loop's own time per
    request (`in_process_loop_ms`: the request less its stage calls), divided by the stage calls per
    request — the BLS round trip and the tensor copies.
    """
    requests = figures[pipeline]["success_count"]
    if not requests:
        raise ValueError(f"no successful {pipeline} request between the snapshots")
    stages = [model for model in figures if model != pipeline]
    calls = sum(figures[model]["success_count"] for model in stages) / requests
    stage_ms = sum(figures[model]["success_total_ms"] for model in stages) / requests
    loop_ms = figures[pipeline]["compute_infer_total_ms"] / requests - stage_ms
    executions = max(1, figures[unet]["executions"])
    return {
        "unet_compute_over_in_process": figures[unet]["compute_infer_total_ms"] / executions / in_process_unet_ms,
        "bls_overhead_per_stage_call_ms": (loop_ms - in_process_loop_ms) / calls,
        "stage_calls_per_request": calls,
    }
