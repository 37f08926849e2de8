"""Per-step cost of the LoRA bank (`unet_bank`) against a merged-LoRA UNet, on CPU.

1. tiny, ONNX Runtime (the tiny-bank export): one UNet step at batch 2 on `unet` (a merged LoRA
   costs what the plain UNet costs: same graph, other weights) vs `unet_bank` with both samples in
   one slot and with the two samples in two different slots. Goal: bank <= 1.15x.
2. full-size SD1.5 UNet shape (public config, random weights), PyTorch, 256x256, batch 2: the
   overhead computed (floating-point operations counted by `torch.utils.flop_counter` for the
   plain and the banked UNet, rank 16) and measured (one step each). GPU users can scale the
   computed figure; on a GPU the gathers and small batched matmuls cost more than their FLOPs.
3. served (`--served`): a real tritonserver on the tiny-bank export, 8 closed-loop clients with 8
   different LoRA sets vs 8 clients all with one LoRA set (throughput; goal >= 0.9x), with
   unet_bank's executions by batch size from Triton's statistics.

The measuring code of 1 and 3 is clif_serve/bench/lora_bank.py (also run by `clif-serve bench`).
Rounds are interleaved (one call of each variant per round), medians reported, ratios within the
run, each ratio from `--repetitions` repetitions (their median, and each one in the JSON). Run under the machine-wide lock (it measures speed and SD1.5 needs ~4 GiB):

    flock /tmp/clif-heavy.lock python benchmarks/lora_bank.py [--export DIR] [--skip-sd15] [--served]

Writes benchmarks/results/lora_bank.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

from clif_serve.bench.environment import describe_environment
from clif_serve.bench.lora_bank import (
    BANK_MODEL,
    BANK_RECIPE,
    MANY_SETS,
    MERGED,
    ONE_SET,
    TWO_SETS,
    bank_repo_options,
    interleaved_medians,
    lora_sets_throughput,
    step_overhead,
)
from clif_serve.bench.results import write_results
from clif_serve.contract.folder import open_export
from clif_serve.export.exporter import export_model
from clif_serve.lora.bank import slot_buffers, with_bank

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size_configs import SD15_UNET  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 1.15


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def tiny_ort(export_dir: Path | None, rounds: int, warmup: int, repetitions: int) -> dict:
    """`step_overhead` on the tiny-bank export (made in a scratch folder unless given), with the
    medians of its per-repetition ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = open_export(export_dir) if export_dir else export_model(BANK_MODEL, Path(tmp) / "e", BANK_RECIPE)
        measured = step_overhead(folder, repetitions, rounds, warmup)
    reps = measured["repetitions"]
    return measured | {
        "ratio_one_set": _median([r["ratio_one_set"] for r in reps]),
        "ratio_two_sets": _median([r["ratio_two_sets"] for r in reps]),
    }


def sd15_torch(rounds: int, warmup: int, rank: int = 16, slots: int = 9) -> dict:
    """SD1.5 UNet at 256x256, batch 2: bank FLOPs overhead computed, and one step timed."""
    from diffusers import UNet2DConditionModel

    from clif_serve.models.loading import LORA_TARGET_SUFFIXES

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval().requires_grad_(False)
    targets = {
        name: (m.in_features, m.out_features)
        for name, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(LORA_TARGET_SUFFIXES)
    }

    spec = SimpleNamespace(lora_targets=targets)  # all with_bank reads of a ModelSpec
    banked = with_bank(unet, spec, slots, rank, share_weights=True)
    buffers = dict(banked.named_buffers())
    slot = torch.tensor([1, 2])
    for name in slot_buffers(spec):
        buffers[name].data = slot  # every sample in its own filled slot
    for name, buffer in buffers.items():
        if name.endswith(("lora_bank_A", "lora_bank_B")):
            buffer.normal_(0.0, 0.01)
    sample = torch.randn(2, 4, 32, 32)
    timestep = torch.tensor([500.0, 500.0])
    hidden = torch.randn(2, 77, 768)

    def step(model):
        return lambda: model(sample, timestep, encoder_hidden_states=hidden, return_dict=False)

    flops = {}
    with torch.inference_mode():
        for label, model in (("plain", unet), ("bank", banked)):
            counter = FlopCounterMode(display=False)
            with counter:
                step(model)()
            flops[label] = counter.get_total_flops()
        medians = interleaved_medians({"merged (plain) UNet": step(unet), "bank UNet": step(banked)}, rounds, warmup)
    bytes_per_slot = sum(rank * (i + o) * 4 for i, o in targets.values())
    return {
        "shape": "SD1.5 UNet, 256x256 (latents 32x32), batch 2, 77 tokens",
        "bank": {"slots": slots, "rank": rank, "targets": len(targets), "mib_per_slot_fp32": round(bytes_per_slot / 2**20, 2)},
        "gflops": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "computed_overhead": round(flops["bank"] / flops["plain"] - 1, 4),
        "median_ms": medians,
        "measured_ratio": round(medians["bank UNet"] / medians["merged (plain) UNet"], 3),
    }


def served_throughput(export_dir: Path, requests_per_client: int, steps: int, repetitions: int) -> dict:
    """`lora_sets_throughput` with 8 clients on a real tritonserver serving the tiny-bank export."""
    from clif_serve.serving.launcher import Ports, TritonServer
    from clif_serve.serving.repository import build_repository

    export = open_export(export_dir)
    with tempfile.TemporaryDirectory() as tmp:
        repo = build_repository(export.root, Path(tmp) / "repo", bank_repo_options(8))
        server = TritonServer(repo, Ports.free_on_loopback(), concept_store=Path(tmp) / "store", log_file=Path(tmp) / "log")
        server.start(timeout_s=300)
        try:
            measured = lora_sets_throughput(server.grpc_url, export, 8, requests_per_client, steps, repetitions, 900)
        finally:
            server.stop()
    return measured | {"ratio_many_over_single_median": _median(measured["ratio_many_over_single"])}


def markdown(report: dict) -> str:
    tiny = report["tiny_ort"]
    lines = [
        "# LoRA bank: per-step overhead vs a merged-LoRA UNet (CPU)",
        "",
        f"Machine: {report['environment'].get('cpu', '?')}, shared with other developers' jobs; "
        "medians of interleaved rounds, ratios within one run.",
        "",
        f"## tiny, ONNX Runtime, one UNet step at batch 2 (bank: {tiny['bank']['slots']} slots of rank {tiny['bank']['rank']})",
        "",
        "| repetition (median ms) | " + " | ".join((MERGED, ONE_SET, TWO_SETS)) + " |",
        "|---|---|---|---|",
        *[
            f"| {i + 1} | " + " | ".join(str(r["median_ms"][v]) for v in (MERGED, ONE_SET, TWO_SETS)) + " |"
            for i, r in enumerate(tiny["repetitions"])
        ],
        "",
        f"Ratio bank / merged (median of repetitions): one set {tiny['ratio_one_set']}x, two sets {tiny['ratio_two_sets']}x "
        f"(goal <= {GOAL}x in every repetition: "
        f"{'met' if all(max(r['ratio_one_set'], r['ratio_two_sets']) <= GOAL for r in tiny['repetitions']) else 'NOT met'}).",
    ]
    sd15 = report.get("sd15_torch")
    if sd15:
        lines += [
            "",
            f"## {sd15['shape']}, PyTorch (random weights)",
            "",
            f"Bank: {sd15['bank']['slots']} slots of rank {sd15['bank']['rank']} on {sd15['bank']['targets']} "
            f"attention projections, {sd15['bank']['mib_per_slot_fp32']} MiB per slot (fp32).",
            "",
            f"* computed: {sd15['gflops']['plain']} GFLOP plain, {sd15['gflops']['bank']} GFLOP with the bank: "
            f"+{sd15['computed_overhead'] * 100:.2f} %",
            f"* measured: {sd15['median_ms']['merged (plain) UNet']} ms vs {sd15['median_ms']['bank UNet']} ms: "
            f"{sd15['measured_ratio']}x",
        ]
    served = report.get("served")
    if served:
        lines += [
            "",
            f"## served tiny-bank, {served['clients']} closed-loop clients, {served['steps']} steps per request",
            "",
            "| phase | steady throughput per repetition (req/s) | unet_bank executions by batch size (all repetitions) |",
            "|---|---|---|",
            *[
                f"| {name} | {', '.join(format(r['steady_throughput_rps'], '.3f') for r in runs)} | {served['unet_bank_batches'][name]} |"
                for name, runs in served["runs"].items()
            ],
            "",
            f"Ratio {MANY_SETS} / one set for all (median of repetitions): {served['ratio_many_over_single_median']}x "
            f"(goal >= 0.9x: {'met' if min(served['ratio_many_over_single']) >= 0.9 else 'NOT met in every repetition'}).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="a tiny-bank export to reuse")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sd15-rounds", type=int, default=3)
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--served", action="store_true", help="also the served 8-client throughput (needs --export)")
    parser.add_argument("--served-requests", type=int, default=3, help="requests per client per phase")
    parser.add_argument("--served-steps", type=int, default=8)
    parser.add_argument("--repetitions", type=int, default=3, help="repetitions of the tiny and served ratios")
    args = parser.parse_args(argv)
    if args.served and args.export is None:
        parser.error("--served needs --export (a tiny-bank export)")
    report = {
        "environment": describe_environment(),
        "tiny_ort": tiny_ort(args.export, args.rounds, args.warmup, args.repetitions),
    }
    _write(report)
    if not args.skip_sd15:
        report["sd15_torch"] = sd15_torch(args.sd15_rounds, 1)
        _write(report)
    if args.served:
        report["served"] = served_throughput(args.export, args.served_requests, args.served_steps, args.repetitions)
        _write(report)
    return 0


def _write(report: dict) -> None:
    """Write what is measured so far (each part takes minutes)."""
    write_results(report, markdown(report), RESULTS, "lora_bank", indent=1)
    print(markdown(report), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
