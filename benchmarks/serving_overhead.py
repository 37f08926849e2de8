"""Served vs in-process per UNet call, BLS overhead, and mixed vs single throughput, per repository setting.

Every variant is served by its own tritonserver at the same time; rounds interleave them with
the in-process ORT pipeline (clif_serve/bench/overhead.py). Run it under the machine-wide lock:

    flock /tmp/clif-heavy.lock python benchmarks/serving_overhead.py --export DIR \
        --variant main:threads=0,pipelines=4,te_delay=2000,unet_delay=0 \
        --variant one_thread:threads=1,pipelines=4 \
        --variant nospin:spinning=off --machine "nothing else running"

Keys: threads, pipelines, stages, te_delay, unet_delay (integers) and spinning (run, off, always).

Writes benchmarks/results/serving_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from clif_serve.bench.environment import describe_environment
from clif_serve.bench.overhead import OverheadConfig, Variant, measure, summary_table
from clif_serve.bench.results import write_results
from clif_serve.contract.folder import open_export
from clif_serve.local import prepare_export
from clif_serve.models.loading import load_base_model
from clif_serve.serving.options import RepoOptions

KEYS = {
    "threads": "intra_op_threads",
    "pipelines": "pipeline_instances",
    "stages": "stage_instances",
    "te_delay": "text_encoder_delay_us",
    "unet_delay": "unet_delay_us",
    "spinning": "ort_spinning",
}
# Keys of the stage models' parameters (ModelParameters); the others are RepoOptions fields.
MODEL_KEYS = {"intra_op_threads": int, "ort_spinning": str}


def parse_variant(text: str) -> Variant:
    """`name:key=value,...` with the keys of KEYS; unnamed keys keep RepoOptions' defaults."""
    name, _, settings = text.partition(":")
    options = RepoOptions()
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        field = KEYS[key]
        if field in MODEL_KEYS:
            options = replace(options, models=replace(options.models, **{field: MODEL_KEYS[field](value)}))
        else:
            options = replace(options, **{field: int(value)})
    return Variant(name, options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", default=None, help="an export of tiny (default: export to a temporary folder)")
    parser.add_argument("--variant", action="append", required=True, help="name:key=value,... (keys: " + ", ".join(KEYS) + ")")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/serving_overhead")
    parser.add_argument("--machine", default="shared machine", help="what else ran on the machine (written with the results)")
    args = parser.parse_args()
    base = load_base_model("tiny")
    config = OverheadConfig(
        steps=args.steps, requests=args.requests, clients=args.clients, per_client=args.per_client, rounds=args.rounds
    )
    variants = [parse_variant(text) for text in args.variant]
    with tempfile.TemporaryDirectory(prefix="clif-overhead-") as scratch:
        export = open_export(args.export) if args.export else prepare_export("tiny", Path(scratch) / "export")
        report = measure(export, base, variants, config, Path(scratch))
    report["environment"] = describe_environment({"machine": args.machine})
    table = summary_table(report)
    env = report["environment"]
    text = (
        f"Serving overhead on tiny ({args.steps} steps; {args.rounds} interleaved rounds, median [min - max]) on "
        f"{env['cpu']} ({env['cpu_count']} cores, {args.machine}).\n\n{table}\n"
    )
    out = Path(args.out)  # a path without suffix: <folder>/<stem>
    write_results(report, text, out.parent, out.stem)
    print(table)


if __name__ == "__main__":
    main()
