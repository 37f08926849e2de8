"""Writing a suite report: JSON (everything), a markdown summary and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

JSON_FILE, MARKDOWN_FILE = "bench.json", "bench.md"
CONCURRENCY_PLOT, STAGES_PLOT = "latency_vs_concurrency.png", "stage_breakdown.png"


def _ms(summary: dict | None) -> str:
    return "-" if not summary else f"{summary['p50']:.1f} / {summary['p95']:.1f} / {summary['p99']:.1f}"


def markdown(report: dict) -> str:
    """Goals, end-to-end latency, concurrency, stages and hot-load as markdown tables."""
    env, inproc, served = report["environment"], report["in_process"], report["served"]
    cfg = report["config"]
    lines = [
        f"Benchmark of `{cfg['model']}` ({cfg['steps']} steps, {cfg['requests']} timed requests after "
        f"{cfg['warmup']} warm-up) on {env['cpu']} ({env['cpu_count']} cores), torch {env['versions']['torch']}, "
        f"onnxruntime {env['versions']['onnxruntime']}.",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {g['goal']} | {g['measured']:.3g} | {g['target']} | {'yes' if g['met'] else 'no'} |" for g in report["goals"]]
    lines += [
        "",
        "| end to end | p50 / p95 / p99 (ms) |",
        "|---|---|",
        f"| diffusers eager (in process) | {_ms(inproc['diffusers'])} |",
        f"| clif-serve ONNX Runtime (in process) | {_ms(inproc['ort'])} |",
        f"| clif-serve served (Triton, gRPC, 1 client) | {_ms(served['latency_ms'])} |",
        "",
        "| clients | requests | failed | throughput (req/s) | p50 / p95 / p99 (ms) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['concurrency']} | {row['completed']} | {row['failed']} | {row['throughput_rps']:.2f} | {_ms(row['latency_ms'])} |"
        for row in report["concurrency"]
    ]
    lines += ["", "| stage (in-process ORT) | p50 / p95 / p99 (ms) |", "|---|---|"]
    lines += [f"| {stage} | {_ms(summary)} |" for stage, summary in inproc["ort_stages"].items()]
    lines += ["", "| served model | requests | executions | mean request ms | mean compute ms | batches by size |", "|---|---|---|---|---|---|"]
    for model, row in served["server_models"].items():
        lines.append(
            f"| {model} | {row['requests']} | {row['executions']} | {row['success_mean_ms'] or 0:.2f} | "
            f"{row['compute_infer_mean_ms'] or 0:.2f} | {row['batches_by_size']} |"
        )
    mixed, hot = report["mixed"], report["hotload"]
    lines += [
        "",
        f"Mixed concepts: {mixed['clients']} clients, throughput mixed {mixed['throughput_rps']['mixed']:.2f} vs single "
        f"{mixed['throughput_rps']['single']:.2f} req/s (ratio {mixed['ratio_mixed_over_single']:.2f}); executions by "
        "batch size (samples; 2 per request) in the last mixed round: "
        + ", ".join(f"{model} {row['batches_by_size']}" for model, row in mixed["server_batches_last_round"]["mixed"].items())
        + ".",
        f"Hot-load under {hot['background_clients']} clients: add {_ms(hot['add_ms'])} ms, send -> first image "
        f"{_ms(hot['send_to_first_image_ms'])} ms, remove {_ms(hot['remove_ms'])} ms; background "
        f"{hot['background']['completed']} requests, {hot['background']['failed']} failed.",
    ]
    return "\n".join(lines) + "\n"


def plot_concurrency(report: dict, path: Path) -> None:
    """p50/p95 latency and throughput against the number of clients."""
    rows = [row for row in report["concurrency"] if row["latency_ms"]]
    clients = [row["concurrency"] for row in rows]
    figure, latency_axis = plt.subplots(figsize=(6, 4))
    latency_axis.plot(clients, [row["latency_ms"]["p50"] for row in rows], "o-", label="p50")
    latency_axis.plot(clients, [row["latency_ms"]["p95"] for row in rows], "s--", label="p95")
    latency_axis.set_xlabel("concurrent clients")
    latency_axis.set_ylabel("latency (ms)")
    throughput_axis = latency_axis.twinx()
    throughput_axis.plot(clients, [row["throughput_rps"] for row in rows], "^:", color="tab:green", label="throughput")
    throughput_axis.set_ylabel("throughput (req/s)")
    lines = latency_axis.get_lines() + throughput_axis.get_lines()
    latency_axis.legend(lines, [line.get_label() for line in lines], loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_stages(report: dict, path: Path) -> None:
    """Where a request's time goes, in process (ORT stages) and served (per-model means)."""
    steps = report["config"]["steps"]
    stages = report["in_process"]["ort_stages"]
    served = report["served"]["server_models"]
    inproc = {name: summary["mean"] * (steps if name == "unet_step" else 1) for name, summary in stages.items()}
    figure, axis = plt.subplots(figsize=(6, 4))
    bottom = 0.0
    for name, value in inproc.items():
        axis.bar("in process (ORT)", value, bottom=bottom, label=f"in process: {name}")
        bottom += value
    bottom = 0.0
    for model, row in served.items():
        if model == "clif_pipeline" or not row["success_mean_ms"]:
            continue
        total = row["success_mean_ms"] * row["requests"] / max(1, served["clif_pipeline"]["requests"])
        axis.bar("served (Triton)", total, bottom=bottom, label=f"served: {model}")
        bottom += total
    pipeline_ms = served["clif_pipeline"]["success_mean_ms"] or 0.0
    axis.bar("served (Triton)", max(0.0, pipeline_ms - bottom), bottom=bottom, label="served: BLS + loop overhead")
    axis.set_ylabel("ms per request")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(report: dict, folder: str | Path) -> list[Path]:
    """Write bench.json, bench.md and the two plots into `folder`; return their paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / JSON_FILE, out / MARKDOWN_FILE, out / CONCURRENCY_PLOT, out / STAGES_PLOT]
    paths[0].write_text(json.dumps(report, indent=2))
    paths[1].write_text(markdown(report))
    plot_concurrency(report, paths[2])
    plot_stages(report, paths[3])
    return paths
