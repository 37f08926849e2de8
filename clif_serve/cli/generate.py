"""`clif-serve generate`: multi-concept generation in process (PyTorch executor), or on a server (`--url`)."""

from __future__ import annotations

import argparse

from clif_serve.cli.common import (
    add_generation_options,
    add_key_options,
    add_model_option,
    add_url_option,
    client_from_args,
    request_from_args,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images with concepts, in process or on a server",
        description="Generate images in process. Load concept packs with --concept and use their triggers "
        "in the prompt, e.g. \"a photo of <a> and <b>\"; --region places a sub-prompt (usually one concept) in a "
        "box or mask of the image. With --url the request goes to a clif-serve Triton "
        "server instead, which uses the concepts in its store (`clif-serve concepts add PACK --url`).",
    )
    add_generation_options(parser)
    add_model_option(parser)
    parser.add_argument(
        "--concept", action="append", default=[], metavar="PACK", help="concept pack (.safetensors); repeatable"
    )
    add_url_option(parser, required=False, help_suffix=" (default: generate in process)")
    add_key_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.url:
        return run_served(args)
    from tqdm import tqdm

    from clif_serve.concepts.pack import read_pack
    from clif_serve.concepts.registry import ConceptRegistry
    from clif_serve.models.loading import load_image_side, load_text_model
    from clif_serve.runtime.images import save_pngs, to_uint8
    from clif_serve.runtime.pipeline import ConceptPipeline
    from clif_serve.runtime.torch_executor import TorchExecutor

    # The packs and the request's fields are checked against the text side and the configs first: a
    # request that will be refused is refused before the UNet and the VAE are loaded.
    text = load_text_model(args.model)
    registry = ConceptRegistry(text.spec, [read_pack(path) for path in args.concept])
    request = request_from_args(args)
    request.validated(text.spec)
    base = load_image_side(text)
    pipeline = ConceptPipeline(TorchExecutor(base), base.tokenizers, registry)
    bars = []

    def on_step(done: int, total: int) -> None:
        # Opened at the first step (a refused request shows none), with the scheduler's count of UNet
        # calls as its total (PNDM runs steps + 1), not the requested steps.
        if not bars:
            bars.append(tqdm(total=total, desc="denoising", unit="step"))
        bars[0].update(done - bars[0].n)

    try:
        images = pipeline.generate(request, on_step=on_step)
    finally:
        for bar in bars:
            bar.close()
    for path in save_pngs(to_uint8(images), args.output):
        print(path)
    return 0


def run_served(args: argparse.Namespace) -> int:
    """Send the request to a server; the server's concept store provides the concepts."""
    from clif_serve.errors import InputError
    from clif_serve.runtime.images import save_pngs

    if args.concept:
        raise InputError(
            "concept", "--concept loads packs in process; hot-load them with `clif-serve concepts add PACK --url`"
        )
    with client_from_args(args) as client:
        images = client.generate(request_from_args(args))
    for path in save_pngs(images, args.output):
        print(path)
    return 0
