"""`clif-serve train`: CLIF training of concept packs (a thin adapter over clif_serve.training)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clif_serve.cli.common import add_model_option


def register(subparsers) -> None:
    from clif_serve.training.config import CustomContrastConfig, TrainConfig
    from clif_serve.training.segmentation import SegmentationConfig

    cc, seg = CustomContrastConfig(), SegmentationConfig()
    defaults = TrainConfig(concepts=(), out=Path())
    parser = subparsers.add_parser(
        "train",
        help="train concept packs (CLIF: contrastive tokens, textual inversion, joint LoRA)",
        description="Train one concept pack per --concept. Stages: clif (contrastive concept tokens), "
        "ti (textual inversion), lora (joint LoRA + tokens; every pack of the set carries the same LoRA).",
    )
    add_model_option(parser)
    parser.add_argument(
        "--concept", action="append", required=True, metavar="NAME=IMAGE_DIR[:CLASS_WORD]",
        help="a concept to learn, e.g. joe=photos/joe:person (repeatable)",
    )
    parser.add_argument("--class", dest="class_words", default=None, metavar="WORD[,WORD...]",
                        help="class words for concepts given without :CLASS_WORD, in --concept order")
    parser.add_argument("--out", required=True, help="output folder: packs, train_log.jsonl, checkpoint/")
    parser.add_argument("--stages", default="clif,ti,lora", help="stages to run, in order (default: clif,ti,lora)")
    parser.add_argument("--steps", default=None, help="steps: N for every stage, or clif=N,ti=N,lora=N")
    parser.add_argument("--lr", default=None, help="learning rate: X for every stage, or clif=X,ti=X,lora=X")
    parser.add_argument("--batch-size", default=None, help="batch size: N, or clif=N,ti=N,lora=N")
    parser.add_argument("--objective", default="clif", choices=("clif", "customcontrast", "clif+customcontrast"),
                        help="stage-1 objective (customcontrast is a documented reconstruction; default: clif)")
    parser.add_argument("--cc-weight", type=float, default=cc.weight, help="weight of customcontrast in clif+customcontrast")
    parser.add_argument("--cc-temperature", type=float, default=cc.temperature, help="cross-sample InfoNCE temperature")
    parser.add_argument("--cc-layer-temperature", type=float, default=cc.layer_temperature, help="per-layer term temperature")
    parser.add_argument("--cc-multiview-weight", type=float, default=cc.multiview_weight, help="weight of the per-layer term")
    parser.add_argument("--cc-views", type=int, default=cc.views, help="augmented views per image")
    parser.add_argument(
        "--contrastive-weight", type=float, default=defaults.contrastive_weight,
        help="with a clif stage: keep its loss, times this, in the ti and lora stages "
        f"(0: the CLIF reference, diffusion loss only; default: {defaults.contrastive_weight:g}; docs/training.md)",
    )
    parser.add_argument(
        "--anchor-weight", type=float, default=defaults.anchor_weight,
        help="trust region: weight of the rows' relative squared distance from the stage-1 result in ti and lora "
        f"(default: {defaults.anchor_weight:g})",
    )
    parser.add_argument("--image-encoder", action="append", default=[], metavar="CLIP_DIR",
                        help="local CLIP folder (CLIPModel layout); one, or one per text encoder (default: tiny CLIP)")
    parser.add_argument("--common", action="append", default=[], metavar="WORD=IMAGE_DIR",
                        help="images of a common concept for G-Aug/R-Aug (default: drawn by the base model)")
    parser.add_argument("--segmentation", default="slic", choices=("slic", "felzenszwalb", "masks", "sam"),
                        help="over-segmentation (masks: IMAGE_DIR/masks/<image stem>*.png; default: slic)")
    parser.add_argument("--max-regions", type=int, default=seg.max_regions, help="regions kept per image")
    parser.add_argument("--min-region-area", type=float, default=seg.min_area, help="smallest region, image fraction")
    parser.add_argument("--max-region-area", type=float, default=seg.max_area, help="largest region, image fraction")
    parser.add_argument("--sam-checkpoint", default=None, help="SAM weights file (with --segmentation sam)")
    parser.add_argument("--num-tokens", type=int, default=2, help="tokens per concept (default: 2)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default: 16)")
    parser.add_argument("--min-image-size", type=int, default=64, help="smallest accepted image side in px")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace):
    """A TrainConfig from the parsed options (parsing errors name the option)."""
    from dataclasses import replace

    from clif_serve.training.config import (
        CustomContrastConfig,
        TrainConfig,
        parse_common,
        parse_concept,
        parse_per_stage,
    )
    from clif_serve.training.segmentation import SegmentationConfig

    classes = args.class_words.split(",") if args.class_words else []
    concepts = tuple(
        parse_concept(text, classes[i] if i < len(classes) else None) for i, text in enumerate(args.concept)
    )
    config = TrainConfig(
        concepts=concepts,
        out=Path(args.out),
        model=args.model,
        stages=tuple(stage.strip() for stage in args.stages.split(",") if stage.strip()),
        objective=args.objective,
        customcontrast=CustomContrastConfig(
            weight=args.cc_weight, temperature=args.cc_temperature, layer_temperature=args.cc_layer_temperature,
            multiview_weight=args.cc_multiview_weight, views=args.cc_views,
        ),
        image_encoders=tuple(args.image_encoder),
        commons=tuple(parse_common(text) for text in args.common),
        segmentation=SegmentationConfig(
            method=args.segmentation, min_area=args.min_region_area, max_area=args.max_region_area,
            max_regions=args.max_regions, sam_checkpoint=Path(args.sam_checkpoint) if args.sam_checkpoint else None,
        ),
        num_tokens=args.num_tokens,
        lora_rank=args.rank,
        lora_alpha=float(args.rank),
        min_image_size=args.min_image_size,
        device=args.device,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        contrastive_weight=args.contrastive_weight,
        anchor_weight=args.anchor_weight,
        seed=args.seed,
        resume=args.resume,
    )
    for option, kind in (("steps", int), ("lr", float), ("batch_size", int)):
        text = getattr(args, option)
        if text is not None:
            config = replace(config, **{option: {**getattr(config, option), **parse_per_stage(text, kind, option)}})
    return config


def run(args: argparse.Namespace) -> int:
    from clif_serve.training.trainer import train

    result = train(config_from_args(args))
    for path in result.packs:
        print(path)
    print(f"log: {result.log_file}; seconds per stage: {result.seconds}")
    return 0
