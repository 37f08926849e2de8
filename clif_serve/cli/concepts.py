"""`clif-serve concepts ...`: make, inspect, import and export concept packs; add/list/remove on a server."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from clif_serve.cli.common import add_key_options, add_model_option, add_url_option, client_from_args
from clif_serve.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "concepts", help="concept packs: new, inspect, import, export; add, list, remove on a server"
    )
    commands = parser.add_subparsers(dest="concepts_command", required=True, metavar="ACTION")

    new = commands.add_parser(
        "new",
        help="make a pack whose tokens start from a class word",
        description="Make a concept pack for <NAME> whose tokens start from the embedding of a class word.",
    )
    new.add_argument("name", help="concept name, [A-Za-z0-9_-]{1,64}; the trigger is <NAME>")
    add_model_option(new)
    new.add_argument("--init-from", required=True, metavar="WORD", help="class word, one token (e.g. dog)")
    new.add_argument("--num-tokens", type=int, default=2, help="tokens per concept (default: 2)")
    new.add_argument("-o", "--output", required=True, metavar="PACK", help="where to write the .safetensors pack")
    _add_force_option(new)
    new.set_defaults(handler=_new)

    inspect = commands.add_parser("inspect", help="print a pack's manifest", description="Print a pack's manifest.")
    inspect.add_argument("pack", help="a concept pack (.safetensors)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of aligned text")
    inspect.set_defaults(handler=_inspect)

    imp = commands.add_parser(
        "import",
        help="make a pack from textual-inversion and LoRA files of other tools",
        description="Make a concept pack from a textual-inversion embedding (layout detected: diffusers "
        "{token: tensor}, A1111 string_to_param (.pt, read as plain data only), kohya emb_params, SDXL "
        "clip_l/clip_g; SDXL as two files, --embedding twice or their folder), optionally with a LoRA "
        "(diffusers, peft or kohya); or give existing packs (--pack) a LoRA.",
    )
    imp.add_argument(
        "--embedding", action="append", default=[], metavar="FILE|DIR",
        help="textual-inversion file or training folder; SDXL: twice, first text encoder first (learned_embeds, "
        "learned_embeds_2)",
    )
    imp.add_argument("--lora", default=None, metavar="FILE|DIR", help="LoRA file or folder (diffusers, peft, kohya)")
    imp.add_argument(
        "--pack", action="append", default=[], metavar="PACK",
        help="instead of --embedding: existing pack(s) that get the LoRA (several: one set; -o is then a folder)",
    )
    add_model_option(imp)
    imp.add_argument("--name", default=None, help="concept name (default: the stored token or the file name)")
    imp.add_argument("--class-word", default="", help="class word to record in the manifest")
    imp.add_argument(
        "--drop-unsupported", action="store_true",
        help="leave out LoRA tensors a pack cannot hold (text encoder, non-attention UNet modules) instead of refusing",
    )
    imp.add_argument("-o", "--output", required=True, metavar="PACK|DIR", help="where to write the pack(s)")
    _add_force_option(imp)
    imp.set_defaults(handler=_import)

    exp = commands.add_parser(
        "export",
        help="write a pack as textual-inversion and diffusers LoRA files",
        description="Write a pack's embeddings for pipe.load_textual_inversion (-o) and its LoRA for "
        "pipe.load_lora_weights (--lora).",
    )
    exp.add_argument("pack", help="a concept pack (.safetensors)")
    exp.add_argument(
        "--layout", default=None, metavar="LAYOUT",
        help="token: {trigger: tensor} (SDXL: FILE and FILE_2, as diffusers' SDXL script writes); emb_params (SD1.5); "
        "clip: clip_l/clip_g (SDXL; its default)",
    )
    exp.add_argument("-o", "--output", default=None, metavar="FILE", help="where to write the textual-inversion file")
    exp.add_argument("--lora", default=None, metavar="FILE", help="where to write the pack's LoRA (diffusers format)")
    _add_force_option(exp)
    exp.set_defaults(handler=_export)

    add = commands.add_parser(
        "add",
        help="hot-load a pack into a server",
        description="Send a pack to a clif-serve server: it is validated, stored, and used by the next request.",
    )
    add.add_argument("pack", help="a concept pack (.safetensors)")
    _add_url_option(add)
    add.add_argument("--replace", action="store_true", help="replace a loaded concept of the same name")
    add.set_defaults(handler=_add)

    listing = commands.add_parser("list", help="list a server's concepts", description="List a server's concepts.")
    _add_url_option(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)

    remove = commands.add_parser(
        "remove", help="remove a concept from a server", description="Remove a concept from a server's store."
    )
    remove.add_argument("name", help="concept name")
    _add_url_option(remove)
    remove.set_defaults(handler=_remove)


def _add_force_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace output files that exist")


def _refuse_existing(paths, force: bool) -> None:
    """Outputs are not replaced silently: an existing one is an error unless --force."""
    for path in paths:
        if Path(path).exists() and not force:
            raise InputError("output", f"{path} already exists (pass --force to replace it)")


def _add_url_option(parser: argparse.ArgumentParser) -> None:
    add_url_option(parser, required=True)
    add_key_options(parser)


def _new(args: argparse.Namespace) -> int:
    from clif_serve.concepts.create import new_pack
    from clif_serve.concepts.pack import write_pack
    from clif_serve.models.loading import load_text_model

    _refuse_existing([args.output], args.force)
    pack = new_pack(load_text_model(args.model), args.name, args.init_from, args.num_tokens)
    print(write_pack(pack, args.output))
    return 0


def pack_summary(pack) -> dict:
    """What `inspect` shows: the manifest with its real types, embedding shapes and the LoRA, as JSON values."""
    summary = {
        key: json.loads(value) if key in ("tokens", "text_encoders") else value
        for key, value in pack.manifest().items()
        if not key.startswith("lora_")
    }
    summary["embedding_shapes"] = {k: list(v.shape) for k, v in sorted(pack.embeddings.items())}
    summary["lora"] = None
    if pack.lora is not None:
        summary["lora"] = {
            "set": pack.lora.set_id, "rank": pack.lora.rank, "alpha": pack.lora.alpha, "modules": len(pack.lora.modules)
        }
    return summary


def _inspect(args: argparse.Namespace) -> int:
    from clif_serve.concepts.pack import read_pack

    summary = pack_summary(read_pack(args.pack))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    width = max(map(len, summary))
    for key, value in summary.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        print(f"{key:<{width}}  {shown}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from clif_serve.concepts.pack import read_pack, write_pack
    from clif_serve.concepts.textual_inversion import import_textual_inversion
    from clif_serve.lora.formats import read_lora
    from clif_serve.models.loading import load_text_model

    if bool(args.embedding) == bool(args.pack):
        raise InputError("embedding", "give --embedding (a new pack) or --pack (packs that get --lora), not both")
    if args.pack and args.lora is None:
        raise InputError("lora", "is required with --pack (the LoRA the packs get)")
    spec = load_text_model(args.model).spec
    if args.embedding:
        packs = [import_textual_inversion(args.embedding, spec, args.name, args.class_word)]
    else:
        packs = [read_pack(path) for path in args.pack]
    if args.lora is not None:
        imported = read_lora(args.lora, spec, drop_unsupported=args.drop_unsupported)
        print(f"{args.lora}: {imported.describe()}")
        packs = [replace(pack, lora=imported.lora) for pack in packs]
    targets = [Path(args.output)] if len(packs) == 1 else [Path(args.output) / f"{p.name}.safetensors" for p in packs]
    _refuse_existing(targets, args.force)
    for pack, target in zip(packs, targets, strict=True):
        pack.validate_for(spec)
        print(write_pack(pack, target))
    return 0


def _export(args: argparse.Namespace) -> int:
    from clif_serve.concepts.pack import read_pack
    from clif_serve.concepts.textual_inversion import export_textual_inversion, textual_inversion_files
    from clif_serve.lora.formats import write_diffusers_lora

    if args.output is None and args.lora is None:
        raise InputError("output", "give -o (textual-inversion file) and/or --lora (LoRA file)")
    pack = read_pack(args.pack)
    if args.lora is not None and pack.lora is None:
        raise InputError("lora", f"pack {pack.name!r} carries no LoRA")
    outputs = textual_inversion_files(pack, args.output, args.layout) if args.output else []
    _refuse_existing([*outputs, *([args.lora] if args.lora else [])], args.force)
    if args.output:
        for path in export_textual_inversion(pack, args.output, args.layout):
            print(path)
    if args.lora:
        print(write_diffusers_lora(pack.lora, args.lora))
    return 0


def _add(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        result = client.add_concept(args.pack, replace=args.replace)
    done = "added" if result["changed"] else "unchanged (the server already holds this exact pack):"
    print(f"{done} {result['concept']}; the server has {len(result['concepts'])} concept(s)")
    return 0


def _list(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        listing = client.store_listing()
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for concept in listing["concepts"]:
        lora = "  (LoRA)" if concept["lora"] else ""
        tokens = " ".join(_printable(token) for token in concept["tokens"])
        print(f"{_printable(concept['name']):<24} {_printable(concept['trigger']):<26} {tokens}{lora}")
    for skipped in listing["skipped"]:
        print(f"{_printable(skipped['name']):<24} SKIPPED: {_printable(skipped['reason'])}  (concepts remove deletes it)")
    return 0


def _printable(text: str) -> str:
    """Server text as one terminal-safe line (control characters escaped)."""
    return text if text.isprintable() else repr(text)[1:-1]


def _remove(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        result = client.remove_concept(args.name)
    print(f"removed {result['concept']}; the server has {len(result['concepts'])} concept(s)")
    return 0
