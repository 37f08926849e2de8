"""End-to-end CPU speed on `tiny`: diffusers eager vs our PyTorch executor vs our ONNX Runtime executor.

All pipelines draw the same image: same prompt with two concepts (diffusers gets them through
`load_textual_inversion`, ours through concept packs), negative prompt, seed, steps, guidance and
size. Rounds are interleaved (one run of each pipeline per round) so that load from other
processes on a shared machine hits all of them alike; after `--warmup` rounds, the median of
`--rounds` is reported, with ratios taken within this one run. The ONNX Runtime executor runs
with its defaults (plain `InferenceSession.run`, idle threads not spinning) and with IOBinding,
to choose between them (spinning threads: see `ort_variants`). Per-stage times (text encoding, one UNet call at
the guidance batch, VAE decoding) show where time goes.

    python benchmarks/pipeline_speed.py                 # exports tiny to a temporary folder first
    python benchmarks/pipeline_speed.py --export DIR    # reuse an export of tiny
    python benchmarks/pipeline_speed.py --threads 1     # one thread each: robust on a busy machine

Writes benchmarks/results/pipeline_speed.json and .md (pipeline_speed-threads1.* with --threads 1).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import torch

from clif_serve.bench.baselines import diffusers_pipeline, stand_in_packs
from clif_serve.bench.results import write_results
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.export.exporter import export_model
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.factory import ort_pipeline, torch_pipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.sampling import encode_conditioning

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "a photo of <joe> and <rex> on the beach"
NEGATIVE = "blurry"
GOAL = 2.0  # ORT >= 2x faster than diffusers eager, end to end


def _timed(run: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return (time.perf_counter() - started) * 1000, result


def _stage_calls(pipeline, request: GenerationRequest) -> dict[str, Callable[[], object]]:
    """The three stages as the loop calls them (the UNet at the guidance batch of 2)."""
    executor = pipeline.executor
    encoded = pipeline.prompt_encoder.encode(
        [request.prompt, request.negative_prompt], pipeline.registry.snapshot()
    )
    condition = encode_conditioning(executor, encoded)
    scale = executor.spec.vae_scale_factor
    latents = torch.randn(2, executor.spec.latent_channels, request.height // scale, request.width // scale)
    timestep = torch.full((2,), 500.0)
    return {
        "text_encoder (prompt + negative)": lambda: encode_conditioning(executor, encoded),
        "unet (one step, batch 2)": lambda: executor.predict_noise(latents, timestep, condition.hidden),
        "vae_decoder (batch 1)": lambda: executor.decode_latents(latents[:1]),
    }


def _stage_times(pipelines: dict, request: GenerationRequest, repeat: int) -> dict[str, dict[str, float]]:
    """Median ms per stage and pipeline, calls interleaved between the pipelines like the rounds."""
    calls = {name: _stage_calls(pipeline, request) for name, pipeline in pipelines.items()}
    samples = {name: {stage: [] for stage in stages} for name, stages in calls.items()}
    for index in range(repeat + 1):
        for name, stages in calls.items():
            for stage, call in stages.items():
                elapsed, _ = _timed(call)
                if index:  # the first call of each is a warm-up
                    samples[name][stage].append(elapsed)
    return {
        name: {stage: statistics.median(v) for stage, v in stages.items()} for name, stages in samples.items()
    }


def ort_variants(threads: int) -> dict[str, OrtSettings]:
    """The ONNX Runtime settings compared: the defaults (plain runs, no spinning) and IOBinding.

    Spinning intra-op threads (`OrtSettings.spin`) are left out on purpose: after a run they keep
    burning CPU for a while, which slows whatever runs next in the process — here the other
    pipelines of the interleaved rounds — so they cannot be compared fairly in one process.
    """
    settings = OrtSettings(intra_op_threads=threads)
    return {"plain run": settings, "IOBinding": replace(settings, io_binding=True)}


def run(args: argparse.Namespace, work: Path) -> dict:
    """Build the pipelines (files under `work`), time them interleaved and return the report."""
    base = load_base_model("tiny")
    packs = stand_in_packs(base, [("joe", "person"), ("rex", "dog")])
    export_seconds = None
    export_dir = args.export
    if export_dir is None:
        started = time.perf_counter()
        export_dir = export_model(base, work / "tiny", recipe="tiny").root
        export_seconds = round(time.perf_counter() - started, 1)
    request = GenerationRequest(
        PROMPT, negative_prompt=NEGATIVE, steps=args.steps, guidance_scale=7.5, seed=0
    )
    request = request.validated(base.spec)
    diffusers_pipe = diffusers_pipeline(base, packs)
    ours = {
        "clif TorchExecutor": torch_pipeline("tiny", packs),
        **{
            f"clif OrtExecutor ({label})": ort_pipeline(export_dir, packs, variant)
            for label, variant in ort_variants(args.threads).items()
        },
    }
    runners = {
        "diffusers eager": lambda: (
            diffusers_pipe(
                PROMPT,
                negative_prompt=NEGATIVE,
                num_inference_steps=args.steps,
                guidance_scale=7.5,
                generator=torch.Generator().manual_seed(0),
                output_type="pt",
            ).images
        ),
        **{name: (lambda p=pipeline: p.generate(request)) for name, pipeline in ours.items()},
    }
    samples: dict[str, list[float]] = {name: [] for name in runners}
    images = {}
    load_before = os.getloadavg()
    for round_index in range(args.warmup + args.rounds):
        for name, runner in runners.items():
            elapsed, images[name] = _timed(runner)
            if round_index >= args.warmup:
                samples[name].append(elapsed)
    load_after = os.getloadavg()
    busy = max(load_before[0], load_after[0]) > (os.cpu_count() or 1)
    representative = not (busy and torch.get_num_threads() > 1)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    reference = images["diffusers eager"].to(torch.float32)
    best_ort = min((n for n in medians if n.startswith("clif OrtExecutor")), key=medians.get)
    ratio = medians["diffusers eager"] / medians[best_ort]
    return {
        "benchmark": "pipeline_speed",
        "model": "tiny",
        "request": {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "steps": args.steps,
            "guidance_scale": 7.5,
            "seed": 0,
            "size": [request.height, request.width],
        },
        "warmup_rounds": args.warmup,
        "rounds": args.rounds,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "ort_intra_op_threads": args.threads or "onnxruntime default (one per physical core)",
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in load_after],
            # More runnable processes than CPUs: multi-threaded PyTorch (OpenMP) collapses under
            # oversubscription, so its timings, and ratios against it, are not representative.
            "busy": busy,
        },
        "export_seconds": export_seconds,
        "median_ms": {name: round(value, 2) for name, value in medians.items()},
        "samples_ms": {name: [round(v, 2) for v in values] for name, values in samples.items()},
        "speedup_vs_diffusers": {
            name: round(medians["diffusers eager"] / value, 3) for name, value in medians.items()
        },
        "image_max_abs_diff_vs_diffusers": {
            name: float((image.to(torch.float32) - reference).abs().max()) for name, image in images.items()
        },
        "stages_ms": _stage_times(
            {name: ours[name] for name in ("clif TorchExecutor", best_ort)}, request, args.stage_repeat
        ),
        "goal": {
            "ort_speedup_vs_diffusers_at_least": GOAL,
            "best_ort": best_ort,
            "speedup": round(ratio, 3),
            "representative": representative,
            "met": representative and ratio >= GOAL,
        },
    }


def markdown(report: dict) -> str:
    """A small table of the medians and ratios."""
    lines = [
        f"# Pipeline speed on `{report['model']}` ({report['request']['steps']} steps, guidance 7.5, "
        f"{report['request']['size'][0]}x{report['request']['size'][1]}, CPU)",
        "",
        f"Median of {report['rounds']} interleaved rounds after {report['warmup_rounds']} warm-up rounds; "
        f"load average {report['machine']['load_average_before']} -> {report['machine']['load_average_after']} "
        f"on {report['machine']['cpus']} CPUs.",
        "",
        "| pipeline | median ms | speed-up vs diffusers | max abs image diff vs diffusers |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, value in report["median_ms"].items():
        lines.append(
            f"| {name} | {value:.1f} | {report['speedup_vs_diffusers'][name]:.2f}x | "
            f"{report['image_max_abs_diff_vs_diffusers'][name]:.2g} |"
        )
    if not report["goal"]["representative"]:
        lines += [
            "",
            "**The machine was busy (load average above the CPU count): multi-threaded PyTorch collapses "
            "under oversubscription, so these ratios overstate the ONNX Runtime speed-up; see the "
            "`--threads 1` run.**",
        ]
    lines += [
        "",
        "| stage (median ms) | " + " | ".join(report["stages_ms"]) + " |",
        "| --- |" + " ---: |" * len(report["stages_ms"]),
    ]
    stages = next(iter(report["stages_ms"].values()))
    for stage in stages:
        lines.append(
            f"| {stage} | "
            + " | ".join(f"{times[stage]:.2f}" for times in report["stages_ms"].values())
            + " |"
        )
    goal = report["goal"]
    lines += [
        "",
        f"Goal ORT >= {goal['ort_speedup_vs_diffusers_at_least']}x diffusers eager: "
        f"{goal['speedup']:.2f}x with {goal['best_ort']} -> "
        + (
            "met." if goal["met"] else "missed." if goal["representative"] else "not assessed (busy machine)."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--stage-repeat", type=int, default=30)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads of torch and onnxruntime (0: their defaults)"
    )
    parser.add_argument("--export", type=Path, default=None, help="an existing export folder of tiny")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="pipeline-speed-") as work:
        report = run(args, Path(work))
    stem = "pipeline_speed" + (f"-threads{args.threads}" if args.threads else "")
    write_results(report, markdown(report), args.out, stem, indent=1)
    print(markdown(report))


if __name__ == "__main__":
    main()
