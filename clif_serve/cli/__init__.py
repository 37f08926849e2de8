"""The `clif-serve` command line: one module per command group, each with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from clif_serve.errors import ClifServeError

# Command modules under clif_serve.cli, in the order `--help` lists them.
COMMANDS = ("concepts", "generate", "train", "eval", "export", "repo", "serve", "bench")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command group registered."""
    parser = argparse.ArgumentParser(
        prog="clif-serve",
        description="Non-confusing multi-concept image generation (CLIF), served with Triton.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"clif_serve.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `clif-serve` console script; errors print one line and exit with 2."""
    # transformers warns about optional image backends on import; keep the CLI's output clean.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.handler(args) or 0)
    except ClifServeError as exc:
        print(f"clif-serve {args.command}: error: {exc}", file=sys.stderr)
        return 2
