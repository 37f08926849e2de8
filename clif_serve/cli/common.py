"""Options shared by several commands."""

from __future__ import annotations

import argparse

REGION_HELP = (
    "a region: 'SUB-PROMPT=x0,y0,x1,y1' (box in fractions of the width/height), 'SUB-PROMPT=x0,y0,x1,y1px' "
    "(pixels) or 'SUB-PROMPT=@mask.png' (one-channel mask image, white inside); repeatable; regions may "
    "not overlap (docs/regions.md)"
)
MODEL_HELP = "base model: 'tiny', 'tiny-xl', or the path of a local diffusers folder (SD1.5 or SDXL layout)"


def add_model_option(parser: argparse.ArgumentParser, default: str = "tiny") -> None:
    """`--model` as every command takes it."""
    parser.add_argument("--model", default=default, help=f"{MODEL_HELP} (default: {default})")


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """The request options shared by in-process and served generation."""
    parser.add_argument("prompt", help="the prompt; concept triggers such as <joe> may appear anywhere")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (default: none)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance (default: 7.5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--height", type=int, default=None, help="image height, multiple of 8 (default: model's)")
    parser.add_argument("--width", type=int, default=None, help="image width, multiple of 8 (default: model's)")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt (default: 1)")
    parser.add_argument("--region", action="append", default=[], metavar="SUB-PROMPT=WHERE", help=REGION_HELP)
    parser.add_argument(
        "-o", "--output", default="out.png", help="PNG path; several images become out-0.png, out-1.png, ..."
    )


def parse_region(text: str):
    """A `Region` from `--region` text; InputError naming `regions` when it is malformed."""
    from clif_serve.errors import InputError
    from clif_serve.runtime.regions import REGIONS_FIELD, Region

    prompt, equals, where = text.rpartition("=")
    if not equals or not prompt.strip() or not where.strip():
        raise InputError(REGIONS_FIELD, f"--region {text!r}: expected SUB-PROMPT=x0,y0,x1,y1 or SUB-PROMPT=@mask.png")
    where = where.strip()
    if where.startswith("@"):
        return Region.from_image(prompt.strip(), where[1:])
    pixels = where.endswith("px")
    try:
        box = tuple(float(value) for value in where.removesuffix("px").split(","))
    except ValueError as exc:
        raise InputError(REGIONS_FIELD, f"--region {text!r}: the box is not 4 numbers x0,y0,x1,y1") from exc
    return Region(prompt.strip(), box, pixels)


def request_from_args(args: argparse.Namespace):
    """A GenerationRequest from the shared generation options."""
    from clif_serve.runtime.request import GenerationRequest

    return GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        height=args.height,
        width=args.width,
        num_images=args.num_images,
        regions=tuple(parse_region(text) for text in args.region),
    )


URL_HELP = (
    "gRPC HOST:PORT of a clif-serve server; several replicas of one deployment as a comma-separated list or "
    "by repeating --url (requests go to the least busy and fail over to the others)"
)


def add_url_option(parser: argparse.ArgumentParser, required: bool, help_suffix: str = "") -> None:
    """`--url`, repeatable and comma-separated, for the commands that talk to a server (ClifClient splits it)."""
    parser.add_argument(
        "--url", action="append", required=required, default=None, metavar="HOST:PORT", help=URL_HELP + help_suffix
    )


def add_key_options(parser: argparse.ArgumentParser) -> None:
    """`--api-key-file` / `--admin-key-file` of the commands that talk to a server."""
    parser.add_argument(
        "--api-key-file",
        default=None,
        metavar="FILE",
        help="file holding the server's inference key (default: $CLIF_SERVE_API_KEY_FILE, if set)",
    )
    parser.add_argument(
        "--admin-key-file",
        default=None,
        metavar="FILE",
        help="file holding the server's admin key, for add/remove (default: $CLIF_SERVE_ADMIN_KEY_FILE, if set)",
    )


def client_from_args(args: argparse.Namespace):
    """A ClifClient for `--url` (one server or several replicas) with the keys of `--api-key-file` / `--admin-key-file` (else the environment)."""
    from clif_serve.serving.client import ClifClient
    from clif_serve.serving.keys import ClientKeys

    return ClifClient(args.url, keys=ClientKeys.resolve(args.api_key_file, args.admin_key_file))
