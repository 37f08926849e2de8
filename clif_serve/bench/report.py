"""Writing a suite report: JSON (everything), a markdown summary and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clif_serve.serving.protocol import PIPELINE_MODEL  # noqa: E402

JSON_FILE, MARKDOWN_FILE = "bench.json", "bench.md"
CONCURRENCY_PLOT, STAGES_PLOT = "latency_vs_concurrency.png", "stage_breakdown.png"


def _ms(summary: dict | None) -> str:
    return "-" if not summary else f"{summary['p50']:.1f} / {summary['p95']:.1f} / {summary['p99']:.1f}"


def conditions(report: dict, clients: str) -> str:
    """What a figure was measured under: model, steps, clients, CPU."""
    cfg, env = report["config"], report["environment"]
    return f"{cfg['model']}, {cfg['steps']} steps, {clients}, {env['cpu']} ({env['cpu_count']} cores)"


def markdown(report: dict) -> str:
    """Goals, end-to-end latency, concurrency, stages and hot-load as markdown tables."""
    env, e2e = report["environment"], report["end_to_end"]
    cfg = report["config"]
    lines = [
        f"Benchmark of `{cfg['model']}` ({cfg['steps']} steps, {cfg['repetitions']} interleaved rounds of "
        f"{cfg['requests']} timed requests after {cfg['warmup']} warm-up) on {env['cpu']} ({env['cpu_count']} cores), "
        f"torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}. A goal is met only when "
        "every round meets it; \"unclear\" when the rounds straddle it.",
        "",
        "| goal | median | min – max | target | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {g['goal']} | {g['median']:.3g} | {g['min']:.3g} – {g['max']:.3g} | {g['op']} {g['target']:g} | {g['verdict']} |"
        for g in report["goals"]
    ]
    lines += [
        "",
        "| end to end (all rounds) | p50 / p95 / p99 (ms) |",
        "|---|---|",
        f"| diffusers eager (in process) | {_ms(e2e['diffusers'])} |",
        f"| clif-serve ONNX Runtime (in process) | {_ms(e2e['ort'])} |",
        f"| clif-serve served (Triton, gRPC, 1 client) | {_ms(e2e['served'])} |",
        "",
        "| clients | requests | failed | throughput (req/s) | p50 / p95 / p99 (ms) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['concurrency']} | {row['completed']} | {row['failed']} | {row['throughput_rps']:.2f} | {_ms(row['latency_ms'])} |"
        for row in report["concurrency"]
    ]
    lines += ["", "| stage (in-process ORT) | p50 / p95 / p99 (ms per call) | ms per request |", "|---|---|---|"]
    lines += [
        f"| {stage} | {_ms(summary)} | {e2e['ort_stage_ms_per_request'][stage]:.1f} |"
        for stage, summary in e2e["ort_stages"].items()
    ]
    lines += [
        "",
        "| served model (1 client) | samples | executions | mean compute ms per execution | queue / compute / total ms per pipeline request | batches by size |",
        "|---|---|---|---|---|---|",
    ]
    for model, row in e2e["served_models"].items():
        share = e2e["served_ms_per_request"][model]
        lines.append(
            f"| {model} | {row['requests']} | {row['executions']} | {row['compute_infer_mean_ms'] or 0:.2f} | "
            f"{share['queue']:.1f} / {share['compute']:.1f} / {share['total']:.1f} | {row['batches_by_size']} |"
        )
    mixed, hot = report["mixed"], report["hotload"]
    ratios = ", ".join(f"{r:.2f}" for r in mixed["ratio_mixed_over_single"])
    lines += [
        "",
        f"Mixed concepts: {mixed['clients']} clients, mean steady throughput mixed {mixed['throughput_rps']['mixed']:.2f} vs "
        f"single {mixed['throughput_rps']['single']:.2f} req/s (ratio per round {ratios}, order alternating); executions "
        "by batch size (samples; 2 per request) over all rounds: "
        + "; ".join(
            f"{kind}: " + ", ".join(f"{model} {sizes}" for model, sizes in mixed["server_batches"][kind].items())
            for kind in ("single", "mixed")
        )
        + ".",
    ]
    for index, round_ in enumerate(hot):
        lines.append(
            f"Hot-load round {index + 1} under {round_['background_clients']} clients: add {_ms(round_['add_ms'])} ms, send -> "
            f"first image {_ms(round_['send_to_first_image_ms'])} ms, remove {_ms(round_['remove_ms'])} ms; background "
            f"{round_['background']['completed']} requests, {round_['background']['failed']} failed."
        )
    if "lora_bank" in report:
        lines += ["", *lora_bank_lines(report["lora_bank"])]
    return "\n".join(lines) + "\n"


def lora_bank_lines(bank: dict) -> list[str]:
    """The LoRA bank's step times per repetition and its served runs, as markdown."""
    step, served = bank["step"], bank["served"]
    variants = list(step["repetitions"][0]["median_ms"])
    lines = [
        f"LoRA bank (`{bank['export']}`: {step['bank']['slots']} slots of rank {step['bank']['rank']}), one UNet step at "
        f"batch 2 in process, median ms of {step['rounds_per_repetition']} interleaved steps per repetition:",
        "",
        "| repetition | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    lines += [
        f"| {index + 1} | " + " | ".join(f"{r['median_ms'][v]:.3f}" for v in variants) + " |"
        for index, r in enumerate(step["repetitions"])
    ]
    throughput = {kind: [f"{r['steady_throughput_rps']:.2f}" for r in runs] for kind, runs in served["runs"].items()}
    lines += [
        "",
        f"LoRA bank served: {served['clients']} clients, {served['steps']} steps, {served['requests_per_client']} requests "
        "per client per phase; steady throughput per repetition (req/s): "
        + "; ".join(f"{kind} {', '.join(values)}" for kind, values in throughput.items())
        + "; unet_bank executions by batch size (samples): "
        + "; ".join(f"{kind} {sizes}" for kind, sizes in served["unet_bank_batches"].items())
        + ".",
    ]
    return lines


def plot_concurrency(report: dict, path: Path) -> None:
    """p50/p95 latency and throughput against the number of clients (both axes from zero)."""
    rows = [row for row in report["concurrency"] if row["latency_ms"]]
    clients = [row["concurrency"] for row in rows]
    figure, latency_axis = plt.subplots(figsize=(6.5, 4))
    latency_axis.plot(clients, [row["latency_ms"]["p50"] for row in rows], "o-", label="p50")
    latency_axis.plot(clients, [row["latency_ms"]["p95"] for row in rows], "s--", label="p95")
    latency_axis.set_xlabel("concurrent clients")
    latency_axis.set_ylabel("latency (ms)")
    latency_axis.set_ylim(bottom=0)
    throughput_axis = latency_axis.twinx()
    throughput_axis.plot(clients, [row["throughput_rps"] for row in rows], "^:", color="tab:green", label="throughput")
    throughput_axis.set_ylabel("throughput (req/s)")
    throughput_axis.set_ylim(bottom=0)
    lines = latency_axis.get_lines() + throughput_axis.get_lines()
    latency_axis.legend(lines, [line.get_label() for line in lines], loc="upper left")
    latency_axis.set_title(f"served: {conditions(report, 'closed-loop clients')}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def served_bar(e2e: dict) -> dict[str, float]:
    """A served request's time (ms) split by model, the rest being the BLS loop and transfers: the
    segments sum to the pipeline's mean request time in the same measurement."""
    shares = e2e["served_ms_per_request"]
    segments = {model: share["total"] for model, share in shares.items() if model != PIPELINE_MODEL}
    segments["BLS loop + transfers"] = max(0.0, shares[PIPELINE_MODEL]["total"] - sum(segments.values()))
    return segments


def plot_stages(report: dict, path: Path) -> None:
    """Where one request's time goes, in process (ORT stages) and served (per model), from the
    end-to-end rounds (one client)."""
    e2e = report["end_to_end"]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for label, segments in (("in process (ORT)", e2e["ort_stage_ms_per_request"]), ("served (Triton)", served_bar(e2e))):
        bottom = 0.0
        for name, value in segments.items():
            axis.bar(label, value, bottom=bottom, label=f"{label.split(' ')[0]}: {name}")
            bottom += value
    axis.set_ylabel("ms per request")
    axis.set_ylim(bottom=0)
    axis.set_title(f"one request: {conditions(report, '1 client')}", fontsize=8)
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
