"""`clif-serve export`: ONNX (and optionally TensorRT) stages of a base model, checked against PyTorch."""

from __future__ import annotations

import argparse

from clif_serve.cli.common import add_model_option


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export text encoder(s), UNet and VAE decoder to ONNX (and TensorRT)",
        description="Export a base model to an export folder: ONNX text encoder(s) with a concept-table input, "
        "UNet (plain, optionally with a LoRA merged, and unet_lora with onnxruntime adapter inputs), VAE "
        "decoder, tokenizers and a manifest. Every stage is checked against PyTorch before it is accepted.",
    )
    add_model_option(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="the export folder to write")
    parser.add_argument(
        "--recipe",
        default=None,
        metavar="NAME|FILE",
        help="recipe name in export/ (tiny, tiny-xl, sd15-512, sdxl-1024) or a TOML file "
        "(default: tiny/tiny-xl for the embedded models, else sd15-512 or sdxl-1024 by layout)",
    )
    parser.add_argument(
        "--merge-lora",
        default=None,
        metavar="PACK",
        help="fold this concept pack's LoRA into the plain unet stage",
    )
    parser.add_argument(
        "--tensorrt", action="store_true", help="also build TensorRT engines (needs tensorrt and a GPU)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it holds an earlier export")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clif_serve.concepts.pack import read_pack
    from clif_serve.export.exporter import export_model

    folder = export_model(
        args.model,
        args.out,
        recipe=args.recipe,
        merge_lora=read_pack(args.merge_lora) if args.merge_lora else None,
        tensorrt=args.tensorrt,
        overwrite=args.overwrite,
        progress=True,
    )
    print(f"{'stage':<16} {'export s':>9} {'max |ORT - PyTorch|':>20} {'relative':>9} {'tolerance':>9}")
    for name, stage in folder.manifest["stages"].items():
        parity = stage["parity"]
        print(
            f"{name:<16} {stage['export_seconds']:>9.1f} {parity['max_abs_diff']:>20.3g} "
            f"{parity['max_rel_diff']:>9.2g} {parity['tolerance']:>9.2g}"
        )
    print(folder.root)
    return 0
