"""`clif-serve bench`: the latency suite against a running server or one it starts itself."""

from __future__ import annotations

import argparse

from clif_serve.cli.common import add_model_option


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="latency/throughput suite: stages, end to end, concurrency, mixed concepts, hot-load, LoRA bank",
        description="Measure per-stage and end-to-end latency (p50/p95/p99), throughput at several "
        "concurrency levels, mixed vs single concepts, hot-load time under load, served vs in-process "
        "ONNX Runtime vs diffusers eager, and the LoRA bank (per-step overhead, many LoRA sets vs one) in "
        "one run. Without --url it exports the model, builds a repository and starts a local tritonserver "
        "on loopback; without --bank-url the same for the tiny-bank export. Writes JSON, markdown and PNG plots.",
    )
    add_model_option(parser)
    parser.add_argument("--url", default=None, help="gRPC HOST:PORT of a running server (needs --export)")
    parser.add_argument("--export", default=None, help="the export folder the server was built from")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per request (default: 20)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per measurement (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up requests before timing (default: 3)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="client counts to sweep (default: 1,2,4,8)")
    parser.add_argument("--mixed-clients", type=int, default=8, help="clients of the mixed-concept run (default: 8)")
    parser.add_argument("--hotloads", type=int, default=20, help="concepts hot-loaded under load (default: 20)")
    parser.add_argument(
        "--repetitions", type=int, default=3, help="interleaved rounds per goal; verdicts need every round (default: 3)"
    )
    parser.add_argument("--max-seconds", type=float, default=180.0, help="time bound of each load run (default: 180)")
    parser.add_argument("--no-lora-bank", dest="lora_bank", action="store_false", help="leave out the LoRA bank rows")
    parser.add_argument("--bank-url", default=None, help="gRPC HOST:PORT of a server of a tiny-bank export (needs --bank-export)")
    parser.add_argument("--bank-export", default=None, help="the tiny-bank export folder that server was built from")
    parser.add_argument("--bank-clients", type=int, default=8, help="clients (and LoRA sets) of the bank run (default: 8)")
    parser.add_argument("--out", default="benchmarks/results", help="results folder (default: benchmarks/results)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from clif_serve.bench.lora_bank import BANK_MODEL, BANK_RECIPE, bank_repo_options
    from clif_serve.bench.report import write_report
    from clif_serve.bench.suite import BenchConfig, run_suite
    from clif_serve.contract.folder import open_export
    from clif_serve.errors import InputError
    from clif_serve.local import local_server

    if args.url and not args.export:
        raise InputError("export", "--url needs --export (the export folder of that server) for the in-process runs")
    if args.bank_url and not args.bank_export:
        raise InputError("bank_export", "--bank-url needs --bank-export (the tiny-bank export folder of that server)")
    with ExitStack() as services:
        local = None if args.url else services.enter_context(local_server(args.model))
        bank = None
        if args.lora_bank and not args.bank_url:
            options = bank_repo_options(args.bank_clients)
            bank = services.enter_context(local_server(BANK_MODEL, options=options, recipe=BANK_RECIPE))
        config = BenchConfig(
            url=args.url or local.url,
            export=open_export(args.export) if args.export else local.export,
            model=args.model,
            steps=args.steps,
            warmup=args.warmup,
            requests=args.requests,
            concurrency=tuple(int(level) for level in args.concurrency.split(",")),
            mixed_clients=args.mixed_clients,
            hotloads=args.hotloads,
            max_seconds=args.max_seconds,
            repetitions=args.repetitions,
            lora_bank=args.lora_bank,
            bank_url=args.bank_url or (bank.url if bank else None),
            bank_export=open_export(args.bank_export) if args.bank_export else (bank.export if bank else None),
            bank_clients=args.bank_clients,
        )
        report = run_suite(config)
    for path in write_report(report, args.out):
        print(path)
    for goal in report["goals"]:
        print(
            f"{goal['verdict']:<8} {goal['goal']}: median {goal['median']:.3g}, rounds {goal['min']:.3g} - "
            f"{goal['max']:.3g} (target {goal['op']} {goal['target']:g})"
        )
    return 0
