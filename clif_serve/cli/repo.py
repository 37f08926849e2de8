"""`clif-serve repo`: build a Triton model repository from an export folder."""

from __future__ import annotations

import argparse
from dataclasses import fields

from clif_serve.serving.options import BACKENDS, RepoOptions

_INTEGER_OPTIONS = {
    "pipeline_instances": "clif_pipeline instances = requests generated concurrently",
    "stage_instances": "instances of each stage model",
    "text_encoder_delay_us": "text encoders' dynamic-batching queue delay in microseconds",
    "unet_delay_us": "UNet and VAE decoder dynamic-batching queue delay in microseconds",
    "intra_op_threads": "onnxruntime threads per python stage model (0 = one per core)",
    "max_pack_bytes": "largest concept pack accepted over gRPC, in bytes",
}


def register(subparsers) -> None:
    defaults = RepoOptions()
    parser = subparsers.add_parser(
        "repo",
        help="build a Triton model repository from an export folder",
        description="Write a Triton model repository (stage models, clif_pipeline, clif_concepts) for an "
        "export folder made by `clif-serve export`.",
    )
    parser.add_argument(
        "--export", required=True, metavar="DIR", help="export folder (clif-serve export --out)"
    )
    parser.add_argument("--out", required=True, metavar="REPO", help="where to write the model repository")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=defaults.backend,
        help="stage models: python = onnxruntime inside Python-backend models (runs on the nvidia-pytriton "
        "server); onnxruntime / tensorrt = native backends of NVIDIA's tritonserver container "
        f"(default: {defaults.backend})",
    )
    for name, text in _INTEGER_OPTIONS.items():
        default = getattr(defaults, name)
        shown = "the pack format's limit, 256 MiB" if default is None else default
        parser.add_argument(
            "--" + name.replace("_", "-"), type=int, default=default, help=f"{text} (default: {shown})"
        )
    parser.add_argument(
        "--concept-store",
        default=defaults.concept_store,
        metavar="DIR",
        help="concept store written into the configs (absolute or relative to the repository); "
        "`clif-serve serve --concept-store` overrides it (default: <cache>/concepts/<model fingerprint>)",
    )
    parser.add_argument("--force", action="store_true", help="replace REPO if it exists")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clif_serve.serving.repository import build_repository

    options = RepoOptions(**{field.name: getattr(args, field.name) for field in fields(RepoOptions)})
    print(build_repository(args.export, args.out, options, overwrite=args.force))
    return 0
