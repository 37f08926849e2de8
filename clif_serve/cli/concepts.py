"""`clif-serve concepts ...`: make, inspect, import and export concept packs; add/list/remove on a server."""

from __future__ import annotations

import argparse
import json

from clif_serve.cli.common import add_key_options, add_model_option, client_from_args


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
    new.set_defaults(handler=_new)

    inspect = commands.add_parser("inspect", help="print a pack's manifest", description="Print a pack's manifest.")
    inspect.add_argument("pack", help="a concept pack (.safetensors)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of aligned text")
    inspect.set_defaults(handler=_inspect)

    imp = commands.add_parser(
        "import",
        help="make a pack from a diffusers textual-inversion file",
        description="Import a textual-inversion file ({token: tensor}, emb_params or clip_l/clip_g layout).",
    )
    imp.add_argument("embedding", help="textual-inversion file (.safetensors, or .bin read with weights_only)")
    add_model_option(imp)
    imp.add_argument("--name", default=None, help="concept name (default: the stored token or the file name)")
    imp.add_argument("--class-word", default="", help="class word to record in the manifest")
    imp.add_argument("-o", "--output", required=True, metavar="PACK", help="where to write the pack")
    imp.set_defaults(handler=_import)

    exp = commands.add_parser(
        "export",
        help="write a pack as a diffusers textual-inversion file",
        description="Write a pack's embeddings for pipe.load_textual_inversion (SDXL: clip_l/clip_g).",
    )
    exp.add_argument("pack", help="a concept pack (.safetensors)")
    exp.add_argument("--layout", choices=("token", "emb_params"), default="token", help="SD1.5 key layout")
    exp.add_argument("-o", "--output", required=True, help="where to write the textual-inversion file")
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


def _add_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, metavar="HOST:PORT", help="gRPC endpoint of a clif-serve server")
    add_key_options(parser)


def _new(args: argparse.Namespace) -> int:
    from clif_serve.concepts.create import new_pack
    from clif_serve.concepts.pack import write_pack
    from clif_serve.models.loading import load_base_model

    pack = new_pack(load_base_model(args.model), args.name, args.init_from, args.num_tokens)
    print(write_pack(pack, args.output))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from clif_serve.concepts.pack import read_pack

    pack = read_pack(args.pack)
    manifest = pack.manifest()
    manifest["embedding_shapes"] = json.dumps({k: list(v.shape) for k, v in sorted(pack.embeddings.items())})
    if pack.lora is not None:
        manifest["lora_modules"] = str(len(pack.lora.modules))
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        width = max(map(len, manifest))
        for key, value in manifest.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from clif_serve.concepts.pack import write_pack
    from clif_serve.concepts.textual_inversion import import_textual_inversion
    from clif_serve.models.loading import load_base_model

    pack = import_textual_inversion(args.embedding, load_base_model(args.model).spec, args.name, args.class_word)
    print(write_pack(pack, args.output))
    return 0


def _export(args: argparse.Namespace) -> int:
    from clif_serve.concepts.pack import read_pack
    from clif_serve.concepts.textual_inversion import export_textual_inversion

    print(export_textual_inversion(read_pack(args.pack), args.output, args.layout))
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
