"""What regions cost and how well they place concepts: region-aware cross-attention (clif-serve's method)
against noise-prediction composition (MultiDiffusion-style, the measured alternative), on `tiny`.

* Computed (not measured) for full-size shapes: UNet FLOPs per sample and step with 0, 1, 2, 4 region
  slots (torch's FlopCounterMode on a meta-device UNet built from the public SD1.5 and SDXL configs),
  so GPU users can estimate: the attention method adds the per-region FLOPs below to every UNet sample
  of the step; composition adds one whole UNet sample per region and image (the unconditional sample
  is shared).
* Latency, in process (the ONNX Runtime executor on the export the server runs) and served (tritonserver
  on the same export): a 2-region and a 4-region request against the plain request, tiny 64x64, 20
  steps, guidance 7.5. Rounds are interleaved (one of each request per round) and the median is
  reported, as ratios within this one run. A plain request runs on `unet`; a regional one on
  `unet_lora` (the UNet with region inputs, and LoRA inputs at zero). "1 region = whole image, global
  prompt" draws the plain request's image on that path: it separates the cost of the path (the stage,
  its 4 region slots, one more text-encoder call) from the cost of more regions.
* Placement (a pixel proxy, the tiny model has random weights): per seed, concepts A and B in the left
  and right halves; a half counts as placed when it is closer (mean absolute difference) to the image of
  "a photo of <A>" (left) / "a photo of <B>" (right) alone, same seed, than to the other concept's.
  Rows: no regions (the prompt names both), attention, composition.

    python benchmarks/regions.py                      # exports tiny to a temporary folder first
    python benchmarks/regions.py --export DIR         # reuse an export of tiny (recipe tiny: 4 region slots)

Writes benchmarks/results/regions.json and .md. Run it under the machine-wide lock
(`flock /tmp/clif-heavy.lock ...`) on a shared machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from clif_serve.bench.baselines import stand_in_packs
from clif_serve.bench.environment import describe_environment
from clif_serve.bench.results import write_results
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.contract.folder import open_export
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.contract.stages import REGION_HIDDEN_STATES, REGION_MASKS, UNET_LORA
from clif_serve.export.exporter import export_model
from clif_serve.local import local_server
from clif_serve.models import regional_attention
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.executor import Executor, RegionInputs
from clif_serve.runtime.ort_executor import OrtExecutor
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.regions import Region
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.parameters import ModelParameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size_configs import SD15_UNET, SDXL_UNET  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 1.5  # a 2-region request at most 1.5x the plain request
PROMPT = "a photo of <joe> walking <rex> on the beach"
TWO = (Region("a photo of <joe>", box=(0, 0, 0.5, 1)), Region("<rex> on the beach", box=(0.5, 0, 1, 1)))
FOUR = tuple(Region(f"<{'joe' if i % 2 else 'rex'}> number {i}", box=(i / 4, 0, (i + 1) / 4, 1)) for i in range(4))


class NoiseComposition(Executor):
    """MultiDiffusion-style regions (the alternative measured here, not clif-serve's method): each sample
    with regions runs the UNet once more per region with that region's prompt, and the noise predictions
    are blended by the latent masks, `eps = (1 - sum_r m_r) eps_global + sum_r m_r eps_r`. The UNet is
    the plain one; the unconditional samples (no regions) run once."""

    def __init__(self, inner: Executor):
        self.inner = inner
        self.spec = inner.spec
        self.device = inner.device

    def encode_text(self, encoder_index, input_ids, concept_table):
        return self.inner.encode_text(encoder_index, input_ids, concept_table)

    def predict_noise(
        self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, lora_id=None, regions=None
    ):
        if regions is None:
            return self.inner.predict_noise(sample, timestep, encoder_hidden_states, text_embeds, time_ids, lora_id)
        active = regions.masks.flatten(1).any(dim=1).nonzero().flatten()
        count = regions.masks.shape[1]

        def extra(tensor):
            return None if tensor is None else torch.cat([tensor, tensor[active].repeat_interleave(count, dim=0)])

        hidden = torch.cat([encoder_hidden_states, regions.hidden[active].flatten(0, 1)])
        noise = self.inner.predict_noise(
            extra(sample), extra(timestep), hidden, extra(text_embeds), extra(time_ids), lora_id
        )
        base, per_region = noise[: len(sample)], noise[len(sample) :].unflatten(0, (len(active), count))
        masks = regions.masks[active][:, :, None]
        base = base.clone()
        base[active] = (1 - masks.sum(dim=1)) * base[active] + (masks * per_region).sum(dim=1)
        return base

    def decode_latents(self, latents):
        return self.inner.decode_latents(latents)

    def acquire_lora(self, lora, regional=False):
        return self.inner.acquire_lora(lora)  # the plain UNet route: composition needs no region inputs

    def release_lora(self, lora_id, regional=False):
        self.inner.release_lora(lora_id)


class EarlyComposition(NoiseComposition):
    """A hybrid, measured for placement: composition for the first `first_steps` UNet calls of a request,
    region-aware cross-attention after them."""

    def __init__(self, inner: Executor, first_steps: int):
        super().__init__(inner)
        self.first_steps = first_steps
        self.calls = 0

    def predict_noise(
        self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, lora_id=None, regions=None
    ):
        self.calls += 1
        if regions is None or self.calls <= self.first_steps:
            return super().predict_noise(sample, timestep, encoder_hidden_states, text_embeds, time_ids, lora_id, regions)
        return self.inner.predict_noise(sample, timestep, encoder_hidden_states, text_embeds, time_ids, lora_id, regions)

    def acquire_lora(self, lora, regional=False):
        self.calls = 0  # a new request
        return self.inner.acquire_lora(lora, regional)

    def release_lora(self, lora_id, regional=False):
        self.inner.release_lora(lora_id, regional)


def unet_flops(config: dict, size: int, regions: int) -> int:
    """FLOPs of one UNet sample at `size`x`size` pixels with `regions` region slots (0: plain attention)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        regional_attention.install(unet)
        latent = torch.zeros(1, 4, size // 8, size // 8)
        context = torch.zeros(1, 77, config["cross_attention_dim"])
        kwargs = {}
        if config.get("addition_embed_type") == "text_time":
            pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, pooled), "time_ids": torch.zeros(1, 6)}
        if regions:
            masks = torch.zeros(1, regions, size // 8, size // 8)
            hidden = torch.zeros(1, regions, 77, config["cross_attention_dim"])
            kwargs["cross_attention_kwargs"] = regional_attention.region_kwargs(
                hidden, masks, regional_attention.unet_levels(unet)
            )
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(latent, torch.zeros(1), encoder_hidden_states=context, **kwargs)
    return counter.get_total_flops()


def computed_costs() -> dict:
    """Per-region cost of both methods at full-size shapes, per step of a guided (2-sample) request."""
    rows = {}
    for name, config, size in (("sd15", SD15_UNET, 512), ("sd15", SD15_UNET, 768), ("sdxl", SDXL_UNET, 1024)):
        flops = {regions: unet_flops(config, size, regions) for regions in (0, 1, 2, 4)}
        per_region = (flops[4] - flops[0]) / 4
        rows[f"{name}-{size}"] = {
            "unet_gflops_per_sample": flops[0] / 1e9,
            "gflops_per_sample_with_regions": {str(r): f / 1e9 for r, f in flops.items()},
            "attention_extra_gflops_per_region_per_sample": per_region / 1e9,
            # The attention method adds per_region to both samples of a guided step (the unconditional
            # sample's slots are zero but computed: a static graph).
            "attention_extra_per_region_per_step": 2 * per_region / (2 * flops[0]),
            "composition_extra_unet_samples_per_region_per_step": 1,
            "composition_extra_per_region_per_step": flops[0] / (2 * flops[0]),
        }
    return rows


def interleaved(runs: dict[str, Callable[[], object]], rounds: int, desc: str) -> dict[str, dict]:
    """Median and spread (ms) of each run over `rounds` interleaved rounds, after one warm-up round."""
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in tqdm(range(rounds), desc=desc, unit="round"):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            samples[name].append(1000 * (time.perf_counter() - started))
    return {
        name: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "rounds": len(v)}
        for name, v in samples.items()
    }


def unet_calls(executor: OrtExecutor, rounds: int) -> dict[str, dict]:
    """One UNet call of a guided 1-image request (2 samples) on each path, and composition's bigger calls."""
    generator = torch.Generator().manual_seed(0)
    sample, hidden = torch.randn(2, 4, 32, 32, generator=generator), torch.randn(2, 77, 32, generator=generator)
    timestep = torch.full((2,), 500.0)

    def regions(count: int) -> RegionInputs:
        masks = torch.zeros(2, count, 32, 32)
        for region in range(count):
            masks[1, region, :, region * 32 // count : (region + 1) * 32 // count] = 1
        return RegionInputs(torch.randn(2, count, 77, 32, generator=generator), masks)

    def wide(batch: int):
        return torch.randn(batch, 4, 32, 32), torch.full((batch,), 500.0), torch.randn(batch, 77, 32)

    runs = {
        "plain (unet)": lambda: executor.predict_noise(sample, timestep, hidden),
        "2 regions (unet_lora)": lambda r=regions(2): executor.predict_noise(sample, timestep, hidden, regions=r),
        "4 regions (unet_lora)": lambda r=regions(4): executor.predict_noise(sample, timestep, hidden, regions=r),
        "composition, 2 regions (unet, 4 samples)": lambda w=wide(4): executor.predict_noise(*w),
        "composition, 4 regions (unet, 6 samples)": lambda w=wide(6): executor.predict_noise(*w),
    }
    lora = executor.session(UNET_LORA)
    feed = {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": hidden.numpy()}
    feed |= {name: np.zeros((2, 4, *shape), np.float32) for name, shape in ((REGION_HIDDEN_STATES, (77, 32)), (REGION_MASKS, (32, 32)))}
    runs["no regions on unet_lora (zero slots, zero LoRA)"] = lambda: lora.run(None, feed)
    return with_ratios(interleaved(runs, rounds, "unet calls"), base="plain (unet)")


def with_ratios(rows: dict[str, dict], base: str = "plain") -> dict[str, dict]:
    plain = rows[base]["median_ms"]
    return {name: row | {"vs_plain": row["median_ms"] / plain} for name, row in rows.items()}


def requests(steps: int) -> dict[str, GenerationRequest]:
    plain = GenerationRequest(PROMPT, steps=steps, seed=1)
    return {
        "plain": plain,
        "1 region = whole image, global prompt": replace(plain, regions=(Region(PROMPT, box=(0, 0, 1, 1)),)),
        "2 regions": replace(plain, regions=TWO),
        "4 regions": replace(plain, regions=FOUR),
    }


def placement(pipelines: dict[str, ConceptPipeline], seeds: int, steps: int) -> dict:
    """Share of halves closer to their own concept's solo image than to the other's, per method."""
    attention = pipelines["attention"]
    counts: dict[str, list] = {"no regions": [], **{name: [] for name in pipelines}}
    regions = (Region("a photo of <joe>", box=(0, 0, 0.5, 1)), Region("a photo of <rex>", box=(0.5, 0, 1, 1)))
    for seed in tqdm(range(seeds), desc="placement", unit="seed"):
        request = GenerationRequest("a photo of <joe> and <rex>", steps=steps, seed=seed)
        solo = {name: attention.generate(replace(request, prompt=f"a photo of <{name}>")) for name in ("joe", "rex")}
        images = {"no regions": attention.generate(request)}
        images |= {name: pipeline.generate(replace(request, regions=regions)) for name, pipeline in pipelines.items()}
        for row, image in images.items():
            for half, own, other in ((slice(0, 32), "joe", "rex"), (slice(32, 64), "rex", "joe")):
                d_own = (image[..., half] - solo[own][..., half]).abs().mean().item()
                d_other = (image[..., half] - solo[other][..., half]).abs().mean().item()
                counts[row].append({"placed": d_own < d_other, "margin": (d_other - d_own) / d_other})
    return {
        row: {
            "placed_share": sum(c["placed"] for c in cases) / len(cases),
            "mean_margin": statistics.mean(c["margin"] for c in cases),
            "halves": len(cases),
        }
        for row, cases in counts.items()
    }


def markdown(figures: dict) -> str:
    lines = [
        "# Regions: cost and placement (tiny, one run)",
        "",
        f"Machine: {figures['environment']['cpu']}, {figures['environment']['cpu_count']} cores, shared with other "
        f"jobs; {figures['steps']} steps, 64x64, guidance 7.5, onnxruntime intra-op threads {figures['threads']}; "
        f"median of {figures['rounds']} interleaved rounds. Goal: 2 regions <= {GOAL}x the plain request.",
        "",
        "## Latency (ms, median) and ratio to the plain request",
        "",
        "| request | method | in process (ORT) | x plain | served | x plain |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    in_process, served = figures["in_process"], figures.get("served", {})
    for name, row in in_process.items():
        method = "composition (alternative)" if name.startswith("composition") else (
            "attention" if "regions" in name else "-"
        )
        label = name.removeprefix("composition, ")
        other = served.get(name)
        served_cells = f"{other['median_ms']:.0f} | {other['vs_plain']:.2f}" if other else "n/a | n/a"
        lines.append(f"| {label} | {method} | {row['median_ms']:.0f} | {row['vs_plain']:.2f} | {served_cells} |")
    lines += [
        "",
        "## One UNet call of a guided 1-image request (ms, median, in process)",
        "",
        "| call | ms | x plain unet |",
        "| --- | --- | --- |",
    ]
    for name, row in figures["unet_calls"].items():
        lines.append(f"| {name} | {row['median_ms']:.1f} | {row['vs_plain']:.2f} |")
    lines += [
        "",
        "## Computed cost per region at full-size shapes (per step of a guided request, 2 UNet samples)",
        "",
        "| model | UNet GFLOPs / sample | attention: extra GFLOPs / region / sample | attention: + per region | "
        "composition: + per region |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in figures["computed"].items():
        lines.append(
            f"| {name} | {row['unet_gflops_per_sample']:.0f} | {row['attention_extra_gflops_per_region_per_sample']:.2f} "
            f"| {100 * row['attention_extra_per_region_per_step']:.2f} % | "
            f"{100 * row['composition_extra_per_region_per_step']:.0f} % (1 UNet sample) |"
        )
    lines += [
        "",
        f"## Placement (pixel proxy, {figures['placement_seeds']} seeds x 2 halves)",
        "",
        "| row | halves placed | mean margin (d_other - d_own) / d_other |",
        "| --- | --- | --- |",
    ]
    for row, value in figures["placement"].items():
        lines.append(f"| {row} | {100 * value['placed_share']:.0f} % | {value['mean_margin']:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", default=None, help="an export of tiny to reuse (default: export to a temp dir)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    parser.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads, both sides (default: 1)")
    parser.add_argument("--placement-seeds", type=int, default=8, help="seeds of the placement proxy (default: 8)")
    parser.add_argument("--no-served", action="store_true", help="skip the served rows")
    parser.add_argument("--out", default=str(RESULTS), help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    work = Path(tempfile.mkdtemp(prefix="clif-regions-"))
    base = load_base_model("tiny")
    export = open_export(args.export) if args.export else export_model(base, work / "export", recipe="tiny")
    packs = stand_in_packs(base, (("joe", "person"), ("rex", "dog")))
    settings = OrtSettings(intra_op_threads=args.threads)
    tokenizers = export.tokenizers()
    attention = ConceptPipeline(
        OrtExecutor(export, settings), tokenizers, ConceptRegistry(base.spec, packs), export.deployment.limits
    )
    composition = ConceptPipeline(
        NoiseComposition(OrtExecutor(export, settings)), tokenizers, ConceptRegistry(base.spec, packs),
        export.deployment.limits,
    )
    figures: dict = {
        "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "placement_seeds": args.placement_seeds,
        "environment": describe_environment(),
    }
    print("computing full-size FLOPs (meta device) ...")
    figures["computed"] = computed_costs()
    named = requests(args.steps)
    runs = {name: (lambda r=request: attention.generate(r)) for name, request in named.items()}
    runs |= {f"composition, {name}": (lambda r=named[name]: composition.generate(r)) for name in ("2 regions", "4 regions")}
    figures["in_process"] = with_ratios(interleaved(runs, args.rounds, "in process"))
    figures["unet_calls"] = unet_calls(attention.executor, 5 * args.rounds)
    if not args.no_served:
        options = RepoOptions(models=ModelParameters(intra_op_threads=args.threads))
        shutil.copytree(export.root, work / "served" / "export")
        with local_server("tiny", work / "served", options) as service, ClifClient(service.url) as client:
            for pack in packs:
                client.add_concept(pack, replace=True)
            served_runs = {name: (lambda r=request: client.generate(r)) for name, request in named.items()}
            figures["served"] = with_ratios(interleaved(served_runs, args.rounds, "served"))
    early = max(1, args.steps // 5)
    hybrid = ConceptPipeline(
        EarlyComposition(OrtExecutor(export, settings), early), tokenizers, ConceptRegistry(base.spec, packs),
        export.deployment.limits,
    )
    figures["hybrid_first_steps"] = early
    pipelines = {"attention": attention, "composition": composition, f"hybrid (composition first {early} steps)": hybrid}
    figures["placement"] = placement(pipelines, args.placement_seeds, args.steps)
    write_results(figures, markdown(figures), args.out, "regions", indent=1)
    print(markdown(figures))
    return figures


if __name__ == "__main__":
    main()
