"""Do regions place two toys where they are asked to, on the synthetic world's model (judged, no packs)?

The confusion benchmark's regional rows miss a concept in ~95 % of images (benchmarks/confusion.py).
This separates the regional method from the packs: per trial, two *different* random toys A and B of
the world (clif_serve.evaluation.world, no look-alikes, no concept packs: the world's own captions),
and per method 8 images of "a photo of A and B" with the same noise:

* plain: no regions;
* attention: clif-serve's region-aware cross-attention, "a photo of A" in the left half and "a photo
  of B" in the right half;
* composition: the same regions by noise-prediction composition (MultiDiffusion-style, the
  alternative of benchmarks/regions.py);
* hybrid: composition for the first 4 steps, attention after.

And whether one region moves one toy at all: "a photo of A" without regions against the prompt "a
photo" with "a photo of A" in the left half.

The world's judge (trained on the renderer's ground truth, accuracy in confusion_world.md) finds
the objects; "placed" = A (body shape and colour) in the left half *and* B in the right half.

    python benchmarks/regions_world.py        # needs the world (built by benchmarks/confusion.py, cached)
    python benchmarks/regions_world.py --quick --out /tmp/x   # smoke run on the tiny world (tests)

Writes benchmarks/results/regions_world.json and .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from clif_serve.bench.environment import describe_environment
from clif_serve.bench.results import write_results
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.evaluation.judge import JudgedObject, find_objects, load_judge
from clif_serve.evaluation.world import SIZE, Toy, random_toy
from clif_serve.evaluation.world_model import QUICK_RECIPE, WorldRecipe, build_world
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.executor import Executor
from clif_serve.runtime.images import to_uint8
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.regions import Region
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from confusion import LEFT_HALF, RIGHT_HALF  # noqa: E402
from regions import EarlyComposition, NoiseComposition  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HALF = SIZE // 2
HYBRID_STEPS = 4


def distinct_pair(rng: np.random.Generator) -> tuple[Toy, Toy]:
    """Two random toys whose bodies differ in shape or colour (so the judge can tell them apart)."""
    first = random_toy(rng)
    second = random_toy(rng)
    while (second.body_shape, second.body_colour) == (first.body_shape, first.body_colour):
        second = random_toy(rng)
    return first, second


def shows(objects: list[JudgedObject], toy: Toy, left: bool) -> bool:
    """Whether one of the objects in that half has the toy's body shape and colour."""
    return any(
        (obj.centroid[0] < HALF) == left
        and obj.attributes.get("body_shape") == toy.body_shape
        and obj.attributes.get("body_colour") == toy.body_colour
        for obj in objects
    )


def steer(attention: ConceptPipeline, judge, args) -> dict:
    """Does one region move one toy? Share of the judge's objects left of centre for "a photo of A" without
    regions, and for the prompt "a photo" with "a photo of A" in the left half (attention)."""
    rng = np.random.default_rng(8)
    toys = [random_toy(rng) for _ in range(args.trials)]
    rows = {}
    for name, regional in (("no region", False), ("A in the left half", True)):
        left, objects, images = 0, 0, 0
        for trial, toy in enumerate(toys):
            phrase = f"a photo of {toy.caption()}"
            request = GenerationRequest(
                "a photo" if regional else phrase, steps=args.steps, seed=trial, num_images=args.images,
                regions=(Region(phrase, box=LEFT_HALF),) if regional else (),
            )
            for found in find_objects(judge, to_uint8(attention.generate(request))):
                left += sum(obj.centroid[0] < HALF for obj in found)
                objects += len(found)
                images += 1
        rows[name] = {"images": images, "objects_per_image": objects / images, "left_share": left / max(1, objects)}
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="toy pairs (default 12)")
    parser.add_argument("--images", type=int, default=8, help="images per method and trial (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--world-root", type=Path, default=None, help="world cache folder (default: cache_dir()/worlds)")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default: {RESULTS})")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny world, 2 pairs, 2 images, 2 steps")
    args = parser.parse_args(argv)
    if args.quick and args.out is None:
        parser.error("--quick writes no committed results: give --out")
    args.out = args.out or RESULTS
    if args.quick:
        args.trials, args.images, args.steps = 2, 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    world = build_world(QUICK_RECIPE if args.quick else WorldRecipe(), args.world_root)
    judge = load_judge(world.judge_dir)
    base = load_base_model(world.base_dir)
    executor = TorchExecutor(base)

    def pipeline(wrapped: Executor) -> ConceptPipeline:
        return ConceptPipeline(wrapped, base.tokenizers, ConceptRegistry(base.spec, []))

    attention = pipeline(executor)
    methods = {
        "plain": (attention, False),
        "attention": (attention, True),
        "composition": (pipeline(NoiseComposition(executor)), True),
        f"hybrid (composition first {HYBRID_STEPS} steps)": (pipeline(EarlyComposition(executor, HYBRID_STEPS)), True),
    }
    rng = np.random.default_rng(7)
    cases: dict[str, list[dict]] = {name: [] for name in methods}
    for trial in tqdm(range(args.trials), desc="toy pairs", unit="pair"):
        first, second = distinct_pair(rng)
        regions = (Region(f"a photo of {first.caption()}", box=LEFT_HALF), Region(f"a photo of {second.caption()}", box=RIGHT_HALF))
        for name, (method, regional) in methods.items():
            request = GenerationRequest(
                f"a photo of {first.caption()} and {second.caption()}", steps=args.steps, seed=trial,
                num_images=args.images, regions=regions if regional else (),
            )
            for objects in find_objects(judge, to_uint8(method.generate(request))):
                cases[name].append({
                    "objects": len(objects),
                    "placed": shows(objects, first, left=True) and shows(objects, second, left=False),
                    "both_anywhere": any(shows(objects, first, side) for side in (True, False))
                    and any(shows(objects, second, side) for side in (True, False)),
                })
    steering = steer(attention, judge, args)
    summary = {
        name: {
            "images": len(rows),
            "objects_per_image": float(np.mean([r["objects"] for r in rows])),
            "placed_share": float(np.mean([r["placed"] for r in rows])),
            "both_toys_share": float(np.mean([r["both_anywhere"] for r in rows])),
        }
        for name, rows in cases.items()
    }
    report = {"settings": {k: str(v) for k, v in vars(args).items()}, "summary": summary, "steering": steering,
              "environment": describe_environment()}
    write_results(report, markdown(report), args.out, "regions_world")
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    settings = report["settings"]
    lines = [
        "# Regions on the world's model (judged placement, no packs)", "",
        f"{settings['trials']} pairs of different world toys A, B x {settings['images']} images per method, "
        f"{settings['steps']} steps, the same noise for every method; \"a photo of A and B\"; regions: \"a photo "
        "of A\" left half, \"a photo of B\" right half. Placed: A's body (shape and colour) found in the left half "
        "and B's in the right.", "",
        "| method | images | objects / image | both toys drawn | placed (A left, B right) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in report["summary"].items():
        lines.append(f"| {name} | {row['images']} | {row['objects_per_image']:.2f} | {row['both_toys_share']:.2f} | "
                     f"{row['placed_share']:.2f} |")
    lines += [
        "", "Does one region move one toy? \"a photo of A\" without regions, against the prompt \"a photo\" with "
        "\"a photo of A\" in the left half (attention):", "",
        "| request | images | objects / image | objects left of centre |", "| --- | --- | --- | --- |",
    ]
    for name, row in report["steering"].items():
        lines.append(f"| {name} | {row['images']} | {row['objects_per_image']:.2f} | {row['left_share']:.2f} |")
    env = report["environment"]
    lines += ["", f"Machine: {env['cpu']} ({env['cpu_count']} cores); torch {env['versions']['torch']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
