"""Pack validation time against pack size: parsing and validating LoRA packs of N rank-1 pairs.

The issue-12 report: a 803 KB pack of 4,000 rank-1 pairs took 24 s to validate (quadratic: every
pair re-listed every module). This measures `pack_from_bytes` (header, manifest, tensors, LoRA
validation) for N = 500 ... 16,000 pairs, and, for comparison within the same run, the LoRA
validation of the code before the fix (read from git at --before, default the parent of the fix),
for the sizes where it finishes in reasonable time. Packs whose header is over the 1 MiB bound
(about 5,000 pairs) are refused before any tensor is read: their time is the time to refuse.

    python benchmarks/pack_validation.py            # writes benchmarks/results/pack_validation.{json,md}
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import torch

from clif_serve.bench.baselines import stand_in_packs
from clif_serve.bench.environment import describe_environment
from clif_serve.bench.results import write_results
from clif_serve.concepts.pack import pack_from_bytes, pack_to_bytes
from clif_serve.errors import PackError
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.loading import load_base_model

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def lora_of(pairs: int) -> dict[str, torch.Tensor]:
    tensors = {}
    for index in range(pairs):
        tensors[f"block{index}.attn.to_q.lora_A.weight"] = torch.zeros(1, 8)
        tensors[f"block{index}.attn.to_q.lora_B.weight"] = torch.zeros(8, 1)
    return tensors


def old_weights_module(commit: str) -> types.ModuleType:
    """`clif_serve.lora.weights` as it was at `commit` (before the linear-time validation)."""
    source = subprocess.run(
        ["git", "show", f"{commit}:clif_serve/lora/weights.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType("old_weights")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "old_weights.py", "exec"), module.__dict__)  # noqa: S102 (our own file from git)
    return module


def _parse(data: bytes) -> None:
    try:
        pack_from_bytes(data, max_bytes=1 << 30)
    except PackError:
        pass


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="f79ee04", help="commit whose LoRA validation to compare with")
    parser.add_argument("--before-max-pairs", type=int, default=4000, help="largest size timed with the old code")
    args = parser.parse_args()
    base = load_base_model("tiny")
    pack = stand_in_packs(base, [("many", "dog")])[0]
    old = old_weights_module(args.before)
    rows = []
    for pairs in (500, 1000, 2000, 4000, 8000, 16000):
        tensors = lora_of(pairs)
        data = pack_to_bytes(replace(pack, lora=LoraWeights(tensors, rank=1, alpha=1.0)))
        outcome = "parsed"
        try:
            pack_from_bytes(data, max_bytes=1 << 30)
        except PackError as exc:  # the header bound: refused before any tensor is read
            outcome = f"refused ({exc.field}: {exc.message.split(':')[-1].strip()})"
        now = min(timed(lambda: _parse(data)) for _ in range(3))  # noqa: B023
        lora_now = min(timed(lambda: LoraWeights(tensors, rank=1, alpha=1.0).validate()) for _ in range(3))  # noqa: B023
        before = timed(lambda: old.LoraWeights(tensors, rank=1, alpha=1.0).validate()) if pairs <= args.before_max_pairs else None  # noqa: B023
        rows.append({"pairs": pairs, "pack_bytes": len(data), "outcome": outcome, "parse_and_validate_s": now,
                     "lora_validate_s": lora_now, "lora_validate_before_s": before})
        print(rows[-1], flush=True)
    report = {"environment": describe_environment({"shared_machine": True}), "before_commit": args.before, "rows": rows}
    lines = [
        f"Pack validation against size on {report['environment']['cpu']} (shared machine): LoRA packs of N rank-1 pairs. "
        f"`before` = the LoRA validation at commit {args.before}. `python benchmarks/pack_validation.py`.",
        "",
        "| pairs | pack KB | pack_from_bytes | time (s) | per 1000 pairs (s) | LoRA validate now (s) | LoRA validate before (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        before = "-" if row["lora_validate_before_s"] is None else f"{row['lora_validate_before_s']:.2f}"
        lines.append(
            f"| {row['pairs']} | {row['pack_bytes'] / 1024:.0f} | {row['outcome']} | {row['parse_and_validate_s']:.3f} | "
            f"{1000 * row['parse_and_validate_s'] / row['pairs']:.3f} | {row['lora_validate_s']:.3f} | {before} |"
        )
    write_results(report, "\n".join(lines) + "\n", RESULTS, "pack_validation")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
