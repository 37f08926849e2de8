"""GPU latency of full-size SD1.5 and SDXL networks (random weights, public configs).

Times, per model, one UNet step at batch 2 (classifier-free guidance) in several execution modes
(eager math attention, SDPA, torch.compile, CUDA graphs, torch.compile + CUDA graphs), the text
encoder(s) and the VAE decoder, and estimates end-to-end latency at `--steps`. It also shows
that swapping the concept table between calls of a compiled / graph-captured text encoder does
not recompile (torch.compiler's fail_on_recompile stance) and gives the eager result.

    python benchmarks/gpu_unet.py                               # CUDA, fp16, full size
    python benchmarks/gpu_unet.py --device cpu --size tiny      # the same code on the tiny models

Anchors to compare with: stable-fast reports 104.6 it/s for SD1.5 on an H100; TensorRT reports
61 it/s on an A100. Weights do not change latency, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size_configs import MODELS  # noqa: E402

from clif_serve.bench.results import write_results  # noqa: E402
from clif_serve.models.concept_text_encoder import ConceptTextEncoder  # noqa: E402
from clif_serve.models.loading import load_base_model  # noqa: E402
from clif_serve.models.spec import TextEncoderSpec  # noqa: E402

ANCHORS = {"stable-fast SD1.5 H100 it/s": 104.6, "TensorRT SD1.5 A100 it/s": 61.0}
CUDA_ONLY = {"cudagraph", "compile-cudagraph"}
TINY_NAMES = {"sd15": "tiny", "sdxl": "tiny-xl"}


class Networks:
    """The three networks of one model, ready on the device."""

    def __init__(self, unet, text_encoders, vae, resolution, kind):
        self.unet, self.text_encoders, self.vae = unet, text_encoders, vae
        self.resolution, self.kind = resolution, kind


def _encoder_spec(config: CLIPTextConfig, name: str, kind: str) -> TextEncoderSpec:
    return TextEncoderSpec(
        name=name,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        max_length=config.max_position_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        hidden_layer="penultimate" if kind == "sdxl" else "last",
        pooled_size=config.projection_dim,
    )


def build_networks(kind: str, size: str, device: str, dtype: torch.dtype) -> Networks:
    """Full-size networks from public configs, or the embedded tiny model of the same layout."""
    if size == "tiny":
        base = load_base_model(TINY_NAMES[kind], device=device, dtype=dtype)
        encoders = [ConceptTextEncoder(m, s) for m, s in zip(base.text_encoders, base.spec.text_encoders)]
        return Networks(base.unet, encoders, base.vae, base.spec.default_image_size, kind)
    recipe = MODELS[kind]
    with torch.device(device):
        unet = UNet2DConditionModel(**recipe["unet"])
        vae = AutoencoderKL(**recipe["vae"])
        encoders = []
        for index, values in enumerate(recipe["text_encoders"]):
            config = CLIPTextConfig(**values)
            module_class = CLIPTextModelWithProjection if index == 1 else CLIPTextModel
            name = "text_encoder" if index == 0 else "text_encoder_2"
            encoders.append(ConceptTextEncoder(module_class(config), _encoder_spec(config, name, kind)))
    for module in (unet, vae, *encoders):
        module.to(dtype=dtype).eval().requires_grad_(False)
    return Networks(unet, encoders, vae, recipe["resolution"], kind)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn, device: str, warmup: int, iterations: int) -> float:
    """Median wall time of `fn` in milliseconds after `warmup` calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def unet_inputs(nets: Networks, device: str, dtype: torch.dtype) -> dict:
    """Batch-2 (CFG) UNet inputs at the model's resolution."""
    latent = nets.resolution // (2 ** (len(nets.vae.config.block_out_channels) - 1))
    width = sum(encoder.spec.hidden_size for encoder in nets.text_encoders)
    inputs = dict(
        sample=torch.randn(2, nets.unet.config.in_channels, latent, latent, device=device, dtype=dtype),
        timestep=torch.full((2,), 500.0, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(2, 77, width, device=device, dtype=dtype),
    )
    if nets.kind == "sdxl":
        pooled = nets.text_encoders[-1].spec.pooled_size
        inputs["added_cond_kwargs"] = dict(
            text_embeds=torch.randn(2, pooled, device=device, dtype=dtype),
            time_ids=torch.tensor([[nets.resolution] * 2 + [0, 0] + [nets.resolution] * 2] * 2, device=device, dtype=dtype),
        )
    return inputs


def capture_cuda_graph(fn):
    """Warm `fn` up on a side stream, capture it into a CUDA graph and return the replay function."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def unet_step_variants(nets: Networks, inputs: dict, variants: list[str], args) -> dict[str, float]:
    """Median ms of one batch-2 UNet step per execution mode."""
    results = {}
    for variant in variants:
        torch._dynamo.reset()
        nets.unet.set_attn_processor(AttnProcessor() if variant == "eager" else AttnProcessor2_0())
        module = nets.unet
        if variant == "compile":
            module = torch.compile(nets.unet, backend=args.compile_backend)
        elif variant == "compile-cudagraph":
            module = torch.compile(nets.unet, mode="reduce-overhead")

        def step(module=module):
            return module(**inputs, return_dict=False)[0]

        call = capture_cuda_graph(step) if variant == "cudagraph" else step
        results[variant] = time_ms(call, args.device, args.warmup, args.iterations)
    nets.unet.set_attn_processor(AttnProcessor2_0())
    return results


def concept_ids(encoder: ConceptTextEncoder, device: str) -> torch.Tensor:
    """Batch-2 ids: a few base tokens, two concept tokens (rows 0 and 1 of the table), end, padding."""
    spec = encoder.spec
    body = [spec.bos_token_id, 1, 2, 3, spec.vocab_size, spec.vocab_size + 1, spec.eos_token_id]
    ids = body + [spec.pad_token_id] * (spec.max_length - len(body))
    return torch.tensor([ids, ids], device=device)


def concept_swap_check(encoder: ConceptTextEncoder, args, dtype: torch.dtype) -> dict:
    """Compile (and on CUDA graph-capture) the text encoder, swap the table, look for recompiles."""
    ids = concept_ids(encoder, args.device)
    generator = torch.Generator(args.device).manual_seed(0)
    tables = [torch.randn(2, 2, encoder.spec.hidden_size, device=args.device, dtype=dtype, generator=generator) for _ in range(2)]
    eager = [encoder(ids, table)[0] for table in tables]
    torch._dynamo.reset()
    compiled = torch.compile(encoder, backend=args.compile_backend, dynamic=False)
    first = compiled(ids, tables[0])[0]
    torch.compiler.set_stance("fail_on_recompile")
    try:
        second = compiled(ids, tables[1])[0]
        recompiled = False
    except Exception:  # raised by the fail_on_recompile stance
        second, recompiled = None, True
    finally:
        torch.compiler.set_stance("default")
    result = {
        "compiled_recompiled_on_swap": recompiled,
        "compiled_max_abs_diff_vs_eager": None if second is None else float((second - eager[1]).abs().max()),
        "swap_changes_output": bool((eager[0] - eager[1]).abs().max() > 0),
        "compiled_first_call_max_abs_diff": float((first - eager[0]).abs().max()),
    }
    if args.device.startswith("cuda"):
        static_table = tables[0].clone()
        output = {}
        replay = capture_cuda_graph(lambda: output.__setitem__("hidden", encoder(ids, static_table)[0]))
        static_table.copy_(tables[1])
        replay()
        result["cudagraph_max_abs_diff_vs_eager_after_swap"] = float((output["hidden"] - eager[1]).abs().max())
    return result


def benchmark_model(kind: str, args, dtype: torch.dtype) -> dict:
    """Every figure for one model layout."""
    nets = build_networks(kind, args.size, args.device, dtype)
    variants = [v for v in args.variants if args.device.startswith("cuda") or v not in CUDA_ONLY]
    with torch.inference_mode():
        inputs = unet_inputs(nets, args.device, dtype)
        unet_ms = unet_step_variants(nets, inputs, variants, args)
        text_ms = {}
        for encoder in nets.text_encoders:
            ids = concept_ids(encoder, args.device)
            table = torch.zeros(2, 2, encoder.spec.hidden_size, device=args.device, dtype=dtype)
            text_ms[encoder.spec.name] = time_ms(
                lambda encoder=encoder, ids=ids, table=table: encoder(ids, table), args.device, args.warmup, args.iterations
            )
        latent = inputs["sample"][:1]
        vae_ms = time_ms(lambda: nets.vae.decode(latent, return_dict=False)[0], args.device, 1, max(1, args.iterations // 4))
    swap = concept_swap_check(nets.text_encoders[0], args, dtype)
    fixed = sum(text_ms.values()) + vae_ms
    return {
        "resolution": nets.resolution,
        "unet_step_ms": unet_ms,
        "unet_it_per_s": {v: 1000.0 / ms for v, ms in unet_ms.items()},
        "text_encoder_ms": text_ms,
        "vae_decode_ms": vae_ms,
        "end_to_end_ms_estimate": {v: fixed + args.steps * ms for v, ms in unet_ms.items()},
        "concept_swap": swap,
    }


def environment(args, dtype) -> dict:
    """Where and how the numbers were taken."""
    info = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dtype": str(dtype),
        "size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
        "iterations": args.iterations,
        "threads": torch.get_num_threads(),
        "compile_backend": args.compile_backend,
    }
    return info


def markdown(report: dict) -> str:
    """A table of it/s and end-to-end estimates per model and mode."""
    lines = [
        f"GPU UNet benchmark on {report['environment']['device_name']} ({report['environment']['dtype']}, "
        f"{report['environment']['size']} models, {report['environment']['steps']} steps)",
        "",
        "| model | resolution | mode | UNet step (ms, batch 2) | it/s | end-to-end estimate (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for kind, model in report["models"].items():
        for variant, ms in model["unet_step_ms"].items():
            lines.append(
                f"| {kind} | {model['resolution']} | {variant} | {ms:.2f} | {model['unet_it_per_s'][variant]:.1f} | "
                f"{model['end_to_end_ms_estimate'][variant]:.1f} |"
            )
    lines.append("")
    for kind, model in report["models"].items():
        swap = model["concept_swap"]
        lines.append(f"- {kind}: concept-table swap recompiled: {swap['compiled_recompiled_on_swap']}; {swap}")
    lines.append(f"- anchors: {report['anchors']}")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=("full", "tiny"), default="full", help="full-size configs or tiny models")
    parser.add_argument("--models", default="sd15,sdxl", help="comma list of sd15, sdxl")
    parser.add_argument(
        "--variants", default="eager,sdpa,compile,cudagraph,compile-cudagraph", help="comma list of execution modes"
    )
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: dynamo only)")
    parser.add_argument("--steps", type=int, default=30, help="steps for the end-to-end estimate")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results", help="folder for gpu_unet.json / gpu_unet.md")
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    args.variants = args.variants.split(",")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    report = {
        "environment": environment(args, dtype),
        "anchors": ANCHORS,
        "models": {kind: benchmark_model(kind, args, dtype) for kind in args.models},
    }
    write_results(report, markdown(report), args.out, "gpu_unet")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
