"""Per-model figures from Triton's inference statistics, as differences between two snapshots."""

from __future__ import annotations

from collections.abc import Iterable

from clif_serve.serving.client import ClifClient


def snapshot(client: ClifClient, models: Iterable[str]) -> dict[str, dict]:
    """The statistics of each model right now."""
    return {model: client.statistics(model) for model in models}


def _ns(stats: dict, key: str) -> tuple[int, int]:
    entry = stats.get("inference_stats", {}).get(key, {})
    return int(entry.get("count", 0)), int(entry.get("ns", 0))


def _batch_sizes(stats: dict) -> dict[int, int]:
    return {int(entry["batch_size"]): int(entry["compute_infer"]["count"]) for entry in stats.get("batch_stats", [])}


def difference(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Per model: requests, executions, mean and total request/queue/compute ms, batch-size histogram in between."""
    figures = {}
    for model, now in after.items():
        then = before.get(model, {})
        requests = int(now.get("inference_count", 0)) - int(then.get("inference_count", 0))
        executions = int(now.get("execution_count", 0)) - int(then.get("execution_count", 0))
        row = {"requests": requests, "executions": executions}
        for key in ("success", "queue", "compute_infer"):
            count = _ns(now, key)[0] - _ns(then, key)[0]
            total = _ns(now, key)[1] - _ns(then, key)[1]
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
