"""Options shared by several commands."""

from __future__ import annotations

import argparse

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
    parser.add_argument(
        "-o", "--output", default="out.png", help="PNG path; several images become out-0.png, out-1.png, ..."
    )


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
    """A ClifClient for `--url` with the keys of `--api-key-file` / `--admin-key-file` (else the environment)."""
    from clif_serve.serving.client import ClifClient
    from clif_serve.serving.keys import ClientKeys

    return ClifClient(args.url, keys=ClientKeys.resolve(args.api_key_file, args.admin_key_file))
