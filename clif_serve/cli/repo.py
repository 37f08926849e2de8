"""`clif-serve repo`: build a Triton model repository from an export folder."""

from __future__ import annotations

import argparse

from clif_serve.contract.ort_settings import SPINNING
from clif_serve.serving.options import BACKENDS, DEVICES, RepoOptions
from clif_serve.serving.parameters import ModelParameters

# RepoOptions fields (first) and ModelParameters fields (second) set from integer flags.
_REPO_INTEGERS = {
    "pipeline_instances": "clif_pipeline instances = requests generated concurrently",
    "stage_instances": "instances of each stage model",
    "text_encoder_delay_us": "text encoders' dynamic-batching queue delay in microseconds",
    "unet_delay_us": "UNet and VAE decoder dynamic-batching queue delay in microseconds",
}
_MODEL_INTEGERS = {
    "intra_op_threads": "onnxruntime threads per python stage model (0 = one per core)",
    "max_pack_bytes": "largest concept pack accepted over gRPC, in bytes",
    "adapter_capacity": "LoRA adapters each unet_lora instance keeps built",
    "max_concepts": "concepts the concept store may hold (hot-loads beyond it are refused)",
}


def register(subparsers) -> None:
    repo_defaults, model_defaults = RepoOptions(), ModelParameters()
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
        default=repo_defaults.backend,
        help="stage models: python = onnxruntime inside Python-backend models (runs on the nvidia-pytriton "
        "server); onnxruntime / tensorrt = native backends of NVIDIA's tritonserver container "
        f"(default: {repo_defaults.backend})",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=repo_defaults.device,
        help="where the Python-backend models run: cuda = KIND_GPU instances, onnxruntime's CUDA EP in the "
        "python stage models and the pipeline's tensors kept on the GPU between stage calls "
        f"(default: {repo_defaults.device})",
    )
    for defaults, options in ((repo_defaults, _REPO_INTEGERS), (model_defaults, _MODEL_INTEGERS)):
        for name, text in options.items():
            default = getattr(defaults, name)
            parser.add_argument("--" + name.replace("_", "-"), type=int, default=default, help=f"{text} (default: {default})")
    parser.add_argument(
        "--ort-spinning",
        choices=SPINNING,
        default=model_defaults.ort_spinning,
        help="onnxruntime worker threads of the python stage models: run = spin during a run, sleep between "
        "runs; off = always sleep when idle; always = onnxruntime's default, spinning on after a run "
        f"(default: {model_defaults.ort_spinning}; docs/performance.md)",
    )
    parser.add_argument(
        "--concept-store",
        default=model_defaults.concept_store,
        metavar="DIR",
        help="concept store written into the configs (absolute or relative to the repository); "
        "`clif-serve serve --concept-store` overrides it (default: <cache>/concepts/<model fingerprint>)",
    )
    parser.add_argument(
        "--no-lora-adapters",
        dest="lora_adapters",
        action="store_false",
        help="serve unet_lora only as the base UNet of a merged export: packs of other LoRA sets are refused "
        "(default: any LoRA set runs as an adapter, python backend)",
    )
    parser.add_argument(
        "--no-regions",
        dest="regions",
        action="store_false",
        help="refuse regional requests: with --no-lora-adapters too, unet_lora (a second UNet session) is "
        "left out (default: regional requests run on unet_lora where the export has region slots)",
    )
    parser.add_argument("--force", action="store_true", help="replace REPO if it exists")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from clif_serve.serving.repository import build_repository

    models = ModelParameters(
        concept_store=args.concept_store,
        lora_adapters=args.lora_adapters,
        ort_spinning=args.ort_spinning,
        regions=args.regions,
        **{name: getattr(args, name) for name in _MODEL_INTEGERS},
    )
    options = RepoOptions(backend=args.backend, device=args.device, models=models, **{name: getattr(args, name) for name in _REPO_INTEGERS})
    print(build_repository(args.export, args.out, options, overwrite=args.force))
    return 0
