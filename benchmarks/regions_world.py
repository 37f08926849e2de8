"""Regions on the synthetic world of `benchmarks/confusion.py`: with two boxes, is each concept's half of a
generated image assigned to its own concept more often than without them?

Quick evidence until the non-confusion benchmark on generated images lands (its judge will replace
the one here). Per seed: the confusion benchmark's world (a tiny CLIP and the tiny UNet trained on
two-part toys; trained once, or reused with `--world`), two look-alike concepts <ann> and <bob>
learned from 4 images each (`--stages`: textual inversion by default, or CLIF stage 1 + TI), then
in process (PyTorch executor) "a photo of <X> and <Y>" for both orders, `--images` images each,
with regions (<X> in the left half, <Y> in the right) and without. Each half is embedded by the
world's CLIP image tower and assigned to the nearer of "a photo of <ann>" / "a photo of <bob>"
(`confusion.confusion`: raw, and calibrated by each caption's mean score); the truth is the concept
the prompt names first for the left half and second for the right. Without regions nothing tells the
model where to put whom, so about half the halves are "wrong" by construction: the baseline.

    .venv/bin/python benchmarks/regions_world.py --world /tmp/world    # keeps the trained world

Writes benchmarks/results/regions_world.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clif_serve.concepts.pack import read_pack
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.images import to_uint8
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.regions import Region
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor
from clif_serve.training.config import CommonSource, ConceptSource, TrainConfig
from clif_serve.training.image_tower import load_image_tower
from clif_serve.training.segmentation import SegmentationConfig
from clif_serve.training.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import confusion as world  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
NAMES = ("ann", "bob")


def learn_pair(seed: int, base_dir: Path, clip_dir: Path, args, work: Path) -> list:
    """The seed's look-alike pair, learned from the world's renders."""
    rng = np.random.default_rng(1000 + seed)
    pair = world.look_alike_pair(rng)
    folders = world.write_folders(work, pair, rng, args.shots)
    concepts = tuple(ConceptSource(name, folders[name], pair[0].body_shape) for name in NAMES)
    commons = tuple(CommonSource(key.split(":", 1)[1], path) for key, path in folders.items() if ":" in key)
    stages = tuple(args.stages.split("+"))
    config = TrainConfig(
        concepts=concepts, commons=commons, out=work / "run", model=str(base_dir), stages=stages, image_encoders=(str(clip_dir),),
        seed=seed, segmentation=SegmentationConfig(method="masks", min_area=0.005),
        steps={"clif": args.clif_steps if "clif" in stages else 0, "ti": args.ti_steps, "lora": 0},
    )
    return [read_pack(path) for path in train(config).packs]


def halves(images: np.ndarray) -> list:
    """Left and right halves of uint8 images `[N, H, W, 3]`, as PIL images (left, right, left, right, ...)."""
    from PIL import Image

    width = images.shape[2]
    return [Image.fromarray(part) for image in images for part in (image[:, : width // 2], image[:, width // 2 :])]


def run_seed(seed: int, base_dir: Path, clip_dir: Path, args, work: Path) -> dict:
    packs = learn_pair(seed, base_dir, clip_dir, args, work)
    base = load_base_model(base_dir)
    tower = load_image_tower(clip_dir)
    pipeline = ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec, packs))
    crops: dict[str, list] = {"no regions": [], "regions": []}
    labels: list[int] = []
    for first, second in ((0, 1), (1, 0)):
        x, y = NAMES[first], NAMES[second]
        request = GenerationRequest(
            f"a photo of <{x}> and <{y}>", steps=args.steps, seed=seed, num_images=args.images
        )
        regional = GenerationRequest(
            request.prompt, steps=args.steps, seed=seed, num_images=args.images,
            regions=(Region(f"a photo of <{x}>", box=LEFT), Region(f"a photo of <{y}>", box=RIGHT)),
        )
        crops["no regions"] += halves(to_uint8(pipeline.generate(request)))
        crops["regions"] += halves(to_uint8(pipeline.generate(regional)))
        labels += [first, second] * args.images
    return {row: world.confusion(base, tower, packs, tower.embed(images), labels) for row, images in crops.items()}


def markdown(report: dict) -> str:
    lines = [
        "# Regions on the synthetic world: halves assigned to the wrong concept",
        "",
        f"{len(report['seeds'])} seeds x 2 orders x {report['settings']['images']} images x 2 halves per row; "
        f"concepts learned by `{report['settings']['stages']}`; lower is better, 0.5 is chance (and what no "
        "regions gives by construction). Judge: the world's CLIP image tower (benchmarks/confusion.py).",
        "",
        "| row | calibrated mean [min, max] | raw mean [min, max] |",
        "| --- | --- | --- |",
    ]
    for row, value in report["summary"].items():
        cells = [
            f"{value[m]['mean']:.3f} [{value[m]['min']:.3f}, {value[m]['max']:.3f}]" for m in ("calibrated", "raw")
        ]
        lines.append(f"| {row} | {cells[0]} | {cells[1]} |")
    lines += ["", f"World: {json.dumps(report['world'])}", f"Settings: {json.dumps(report['settings'])}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="concept pairs (default 4)")
    parser.add_argument("--stages", default="ti", choices=("ti", "clif+ti"), help="how the concepts are learned")
    parser.add_argument("--clif-steps", type=int, default=150)
    parser.add_argument("--ti-steps", type=int, default=50)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--images", type=int, default=2, help="images per prompt and order")
    parser.add_argument("--world", type=Path, default=None, help="keep (or reuse) the trained world in this folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clif-regions-world-") as tmp:
        work = Path(tmp)
        world_dir = args.world or work / "world"
        if (world_dir / "world.json").is_file():
            base_dir, clip_dir = world_dir / "base", world_dir / "clip"
            trained = json.loads((world_dir / "world.json").read_text())
        else:
            steps = {"clip": 300, "unet": 100}  # as benchmarks/confusion.py trains it
            base_dir, clip_dir, trained = world.build_world_base(world_dir, steps, 0)
            trained.update(steps)
            (world_dir / "world.json").write_text(json.dumps(trained))
        per_seed = {
            seed: run_seed(seed, base_dir, clip_dir, args, work / f"seed{seed}")
            for seed in tqdm(range(args.seeds), desc="seeds", unit="seed")
        }
    summary = {
        row: {
            metric: {
                "mean": statistics.fmean(per_seed[s][row][metric] for s in per_seed),
                "min": min(per_seed[s][row][metric] for s in per_seed),
                "max": max(per_seed[s][row][metric] for s in per_seed),
            }
            for metric in ("calibrated", "raw")
        }
        for row in ("no regions", "regions")
    }
    report = {
        "seeds": list(range(args.seeds)), "world": trained, "summary": summary, "per_seed": per_seed,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "world")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "regions_world.json").write_text(json.dumps(report, indent=2))
    (args.out / "regions_world.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
