"""`clif-serve eval`: CLIP-T, CLIP-I, DINO and region confusion of concept packs (a thin adapter)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clif_serve.cli.common import add_model_option


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score concept packs on a checkpoint: CLIP-T, CLIP-I, DINO, region confusion",
        description="Generate images of concept prompts (in process with --concept PACK, or on a server with --url) "
        "and score them with your own local models: --clip DIR (CLIPModel layout with tokenizer) and/or --dino DIR "
        "(DINOv2). Writes OUT/eval.json and OUT/eval.md. Nothing is downloaded.",
    )
    add_model_option(parser)
    parser.add_argument("--concept", action="append", default=[], metavar="PACK", help="concept pack; repeatable")
    parser.add_argument("--concept-images", action="append", default=[], metavar="NAME=DIR",
                        help="the concept's own photos, for CLIP-I, DINO and region confusion; repeatable")
    parser.add_argument("--prompt", action="append", default=[],
                        help="prompt with triggers (repeatable; default: each concept alone and every ordered pair)")
    parser.add_argument("--url", default=None, metavar="HOST:PORT", help="generate on a clif-serve server instead")
    parser.add_argument("--clip", type=Path, default=None, metavar="DIR", help="local CLIP folder")
    parser.add_argument("--dino", type=Path, default=None, metavar="DIR", help="local DINOv2 folder")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default: 2)")
    parser.add_argument("--num-images", type=int, default=4, help="images per prompt and seed (default: 4)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance (default: 7.5)")
    parser.add_argument("--segmentation", default="slic", choices=("slic", "felzenszwalb", "masks"),
                        help="how the concepts' photos are cut into regions (default: slic)")
    parser.add_argument("--save-images", action="store_true", help="also write the generated images to OUT/images/")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clif_serve.errors import InputError
    from clif_serve.evaluation.scorecard import EvalConfig, evaluate, markdown
    from clif_serve.training.segmentation import SegmentationConfig

    references = {}
    for text in args.concept_images:
        name, sep, folder = text.partition("=")
        if not sep or not name or not folder:
            raise InputError("concept_images", f"{text!r} is not NAME=DIR")
        references[name] = Path(folder).expanduser()
    config = EvalConfig(
        out=args.out, model=args.model, packs=tuple(Path(p) for p in args.concept), references=references,
        prompts=tuple(args.prompt), url=args.url, clip=args.clip, dino=args.dino, seeds=args.seeds,
        images=args.num_images, steps=args.steps, guidance_scale=args.guidance_scale,
        segmentation=SegmentationConfig(method=args.segmentation), save_images=args.save_images,
    )
    print(markdown(evaluate(config)))
    return 0
