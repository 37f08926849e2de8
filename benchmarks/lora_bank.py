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

Rounds are interleaved (one call of each variant per round), medians reported, ratios within the
run. Run under the machine-wide lock (it measures speed and SD1.5 needs ~4 GiB):

    flock /tmp/clif-heavy.lock python benchmarks/lora_bank.py [--export DIR] [--skip-sd15]

Writes benchmarks/results/lora_bank.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from clif_serve.bench.environment import describe_environment
from clif_serve.bench.results import write_results
from clif_serve.contract.folder import open_export
from clif_serve.contract.stages import UNET, UNET_BANK
from clif_serve.export.exporter import export_model
from clif_serve.lora.bank import slot_buffers, with_bank
from clif_serve.lora.naming import LORA_A_SUFFIX, LORA_B_SUFFIX
from clif_serve.lora.weights import LoraWeights
from clif_serve.runtime.ort_executor import OrtSettings
from clif_serve.runtime.resident_bank import ResidentBank

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size_configs import SD15_UNET  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 1.15


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 3)


def _interleaved(calls: dict, rounds: int, warmup: int) -> dict[str, float]:
    times = {name: [] for name in calls}
    for round_ in range(warmup + rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: _median_ms(values) for name, values in times.items()}


def _random_lora(targets: dict, rank: int, seed: int) -> LoraWeights:
    """A LoRA set of `rank` on every target (small random factors)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (in_features, out_features) in sorted(targets.items()):
        tensors[module + LORA_A_SUFFIX] = torch.randn(rank, in_features, generator=generator) * 0.1
        tensors[module + LORA_B_SUFFIX] = torch.randn(out_features, rank, generator=generator) * 0.1
    return LoraWeights(tensors, rank=rank, alpha=float(rank))


def tiny_ort(export_dir: Path | None, rounds: int, warmup: int) -> dict:
    """Median ms of one UNet step at batch 2: unet vs unet_bank (one slot, two slots)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = open_export(export_dir) if export_dir else export_model("tiny", Path(tmp) / "e", "tiny-bank")
        deployment = folder.deployment
        options = OrtSettings().session_options()
        sessions = {s: ort.InferenceSession(str(folder.onnx_path(s)), options) for s in (UNET, UNET_BANK)}
        resident = ResidentBank(deployment.spec, deployment.bank_slots, deployment.bank_rank)

        for slot in (1, 2):
            resident.bank.fill(slot, _random_lora(deployment.spec.lora_targets, deployment.bank_rank, seed=slot))
        generator = np.random.default_rng(0)
        side = deployment.height.opt // deployment.spec.vae_scale_factor
        feed = {
            "sample": generator.standard_normal((2, deployment.spec.latent_channels, side, side), np.float32),
            "timestep": np.array([500.0, 500.0], np.float32),
            "encoder_hidden_states": generator.standard_normal((2, deployment.spec.max_length, 32), np.float32),
        }
        bank_values = resident.values

        def run_bank(slots):
            values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feed.items()}
            values["lora_slot"] = ort.OrtValue.ortvalue_from_numpy(np.array(slots, np.int64))
            return lambda: sessions[UNET_BANK].run_with_ort_values(["noise_pred"], values | bank_values)

        calls = {
            "unet (merged LoRA)": lambda: sessions[UNET].run(["noise_pred"], feed),
            "unet_bank, one set": run_bank([1, 1]),
            "unet_bank, two sets": run_bank([1, 2]),
        }
        medians = _interleaved(calls, rounds, warmup)
    base = medians["unet (merged LoRA)"]
    return {
        "median_ms": medians,
        "ratio_one_set": round(medians["unet_bank, one set"] / base, 3),
        "ratio_two_sets": round(medians["unet_bank, two sets"] / base, 3),
        "bank": {"slots": deployment.bank_slots, "rank": deployment.bank_rank},
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
        medians = _interleaved({"merged (plain) UNet": step(unet), "bank UNet": step(banked)}, rounds, warmup)
    bytes_per_slot = sum(rank * (i + o) * 4 for i, o in targets.values())
    return {
        "shape": "SD1.5 UNet, 256x256 (latents 32x32), batch 2, 77 tokens",
        "bank": {"slots": slots, "rank": rank, "targets": len(targets), "mib_per_slot_fp32": round(bytes_per_slot / 2**20, 2)},
        "gflops": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "computed_overhead": round(flops["bank"] / flops["plain"] - 1, 4),
        "median_ms": medians,
        "measured_ratio": round(medians["bank UNet"] / medians["merged (plain) UNet"], 3),
    }


def served_throughput(export_dir: Path, requests_per_client: int, steps: int) -> dict:
    """8 clients x 8 LoRA sets vs 8 clients x 1 set on a served tiny-bank export (alternating phases)."""
    from dataclasses import replace

    from clif_serve.bench.load import run_load
    from clif_serve.concepts.create import new_pack
    from clif_serve.models.loading import load_base_model
    from clif_serve.runtime.request import GenerationRequest
    from clif_serve.serving.client import ClifClient
    from clif_serve.serving.launcher import Ports, TritonServer
    from clif_serve.serving.options import RepoOptions
    from clif_serve.serving.repository import build_repository

    base = load_base_model("tiny")
    rank = open_export(export_dir).deployment.bank_rank
    names = [f"set{i}" for i in range(8)]
    packs = [replace(new_pack(base, name, "dog"), lora=_random_lora(base.spec.lora_targets, rank, 100 + i)) for i, name in enumerate(names)]
    with tempfile.TemporaryDirectory() as tmp:
        options = RepoOptions(pipeline_instances=8, text_encoder_delay_us=20_000, unet_delay_us=4_000)
        repo = build_repository(export_dir, Path(tmp) / "repo", options)
        server = TritonServer(repo, Ports.free_on_loopback(), concept_store=Path(tmp) / "store", log_file=Path(tmp) / "log")
        server.start(timeout_s=300)
        try:
            with ClifClient(server.grpc_url) as client:
                for pack in packs:
                    client.add_concept(pack)
                phases = {
                    "8 clients, 8 LoRA sets": lambda i, n: GenerationRequest(f"a photo of <{names[i]}>", steps=steps, seed=n),
                    "8 clients, 1 LoRA set": lambda i, n: GenerationRequest(f"a photo of <{names[0]}>", steps=steps, seed=n),
                }
                run_load(server.grpc_url, 8, phases["8 clients, 1 LoRA set"], 1, 300)  # warm-up
                results = {name: [] for name in phases}
                for _ in range(2):  # alternate the phases so load from other processes hits both
                    for name, make in phases.items():
                        before = client.statistics("unet_bank").get("batch_stats", [])
                        load = run_load(server.grpc_url, 8, make, requests_per_client, 900)
                        after = client.statistics("unet_bank").get("batch_stats", [])
                        counts = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in after}
                        for b in before:
                            counts[int(b["batch_size"])] -= int(b["compute_infer"]["count"])
                        results[name].append({**load.to_dict(), "unet_bank_executions_by_batch": counts})
        finally:
            server.stop()
    throughput = {name: statistics.median(r["throughput_rps"] for r in runs) for name, runs in results.items()}
    return {
        "steps": steps,
        "requests_per_client": requests_per_client,
        "runs": results,
        "throughput_rps": throughput,
        "ratio_8_sets_over_1": round(throughput["8 clients, 8 LoRA sets"] / throughput["8 clients, 1 LoRA set"], 3),
    }


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
        "| variant | median ms |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in tiny["median_ms"].items()],
        "",
        f"Ratio bank / merged: one set {tiny['ratio_one_set']}x, two sets {tiny['ratio_two_sets']}x "
        f"(goal <= {GOAL}x: {'met' if max(tiny['ratio_one_set'], tiny['ratio_two_sets']) <= GOAL else 'NOT met'}).",
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
            f"## served tiny-bank, 8 closed-loop clients, {served['steps']} steps per request",
            "",
            "| phase | throughput (req/s, median of runs) | unet_bank executions by batch size (last run) |",
            "|---|---|---|",
            *[
                f"| {name} | {served['throughput_rps'][name]:.3f} | {runs[-1]['unet_bank_executions_by_batch']} |"
                for name, runs in served["runs"].items()
            ],
            "",
            f"Ratio 8 sets / 1 set: {served['ratio_8_sets_over_1']}x (goal >= 0.9x: "
            f"{'met' if served['ratio_8_sets_over_1'] >= 0.9 else 'NOT met'}).",
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
    args = parser.parse_args(argv)
    report = {"environment": describe_environment(), "tiny_ort": tiny_ort(args.export, args.rounds, args.warmup)}
    _write(report)
    if not args.skip_sd15:
        report["sd15_torch"] = sd15_torch(args.sd15_rounds, 1)
        _write(report)
    if args.served:
        report["served"] = served_throughput(args.export, args.served_requests, args.served_steps)
        _write(report)
    return 0


def _write(report: dict) -> None:
    """Write what is measured so far (each part takes minutes)."""
    write_results(report, markdown(report), RESULTS, "lora_bank", indent=1)
    print(markdown(report), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
