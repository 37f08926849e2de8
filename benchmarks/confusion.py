"""Non-confusion judged on generated images of a synthetic world the pipeline can draw.

The world (clif_serve.evaluation): two-part toys ("a red striped circle with a blue square"); a
tiny text-to-image model trained once on its renders (VAE, CLIP text tower as text encoder,
UNet; a normal diffusers folder) and a judge trained only on the renderer's ground truth. Per
seed, two LOOK-ALIKE concepts <ann> and <bob> share body shape, body colour and head shape and
differ in body texture and head colour; each is learnt from 4 renders by
`clif_serve.training.train` under each row's recipe (same seed, images and base for every row).

Primary metric: "a photo of <ann> and <bob>" and "a photo of <bob> and <ann>" are generated with
the project's pipeline (same noise seeds for every row); the judge finds the objects and their
attributes; confusion = share of objects showing the other concept's distinctive attribute
(leakage) + share of images missing a concept (clif_serve/evaluation/leakage.py). Mean over seeds
and a 95 % bootstrap interval (seeds resampled). Secondary: region->concept retrieval confusion
of held-out part regions in the world CLIP's space (the former benchmark, more regions per seed).

    .venv/bin/python benchmarks/confusion.py                 # results/confusion.{json,md} + sample grids
    .venv/bin/python benchmarks/confusion.py --rows ablation # the give-back ablation (confusion_ablation.*)
    .venv/bin/python benchmarks/confusion.py --rows core     # only the TI and default CLIF runs' rows (confusion_core.*)
    .venv/bin/python benchmarks/confusion.py --quick --out /tmp/x   # smoke run on a tiny world (tests)

Seeds are independent, so a run can be split into shards (one process or machine each) and merged:

    python benchmarks/confusion.py --seeds 5 --out /tmp/a
    python benchmarks/confusion.py --seeds 5 --seed-start 5 --out /tmp/b
    python benchmarks/confusion.py --merge /tmp/a/confusion.json /tmp/b/confusion.json

The world's VAE, CLIP and judge are independent: `--world-part vae|clip|judge` builds one (a
process per core), then `--world-part base` trains the UNet on them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clif_serve.bench.environment import describe_environment
from clif_serve.concepts.create import new_pack
from clif_serve.concepts.pack import read_pack
from clif_serve.evaluation.concept_data import (
    FRAMINGS,
    held_out_regions,
    write_common_folders,
    write_concept_folder,
)
from clif_serve.evaluation.fidelity import drawing_fidelity, fidelity_prompts, vae_fidelity
from clif_serve.evaluation.grid import sample_grid
from clif_serve.evaluation.judge import find_objects, judge_scene, load_judge
from clif_serve.evaluation.leakage import judge_image, score_images
from clif_serve.evaluation.retrieval import concept_text_features, retrieval_confusion
from clif_serve.evaluation.stats import mean_ci, ratio_ci
from clif_serve.evaluation.world import look_alike_pair
from clif_serve.evaluation.world_model import COMPONENT_FIELDS, QUICK_RECIPE, World, WorldRecipe, build_world
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.factory import torch_pipeline
from clif_serve.runtime.images import to_uint8
from clif_serve.runtime.regions import Region
from clif_serve.runtime.request import GenerationRequest
from clif_serve.training.config import ConceptSource, TrainConfig
from clif_serve.training.image_tower import load_image_tower
from clif_serve.training.segmentation import SegmentationConfig
from clif_serve.training.trainer import train

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = ("ann", "bob")
REQUEST_IMAGES = 8  # the pipeline's per-request limit


@dataclass(frozen=True)
class Run:
    """One training run per seed; its packs after every stage feed one or more rows."""

    stages: tuple[str, ...]
    objective: str = "clif"
    changes: dict = field(default_factory=dict)  # other TrainConfig fields (weights, rates)


@dataclass(frozen=True)
class Row:
    """A benchmark row: the packs of `run` after `stage` (run None: class-word init).

    `sampling`: "plain", or "regions" (the same prompt with two boxes: the first-named concept in
    the left half, the second in the right; region-aware cross-attention, docs/regions.md).
    """

    name: str
    run: str | None
    stage: str | None
    sampling: str = "plain"


# "clif" is the default pipeline; the other runs name the weight of the kept stage-1 loss
# (contrastive_weight) explicitly, so their rows keep their meaning whatever the default is.
KEPT = {"contrastive_weight": 1.0}
# The ablation's sweep of that weight between the default (0) and 1: the stage-1 loss is ~3 where the
# diffusion loss is ~0.03, so the sweep reaches down to where the two are of one size.
SWEPT_WEIGHTS = (0.01, 0.03, 0.1)
RUNS = {
    "ti": Run(("ti", "lora")),
    "clif": Run(("clif", "ti", "lora")),
    "clif, kept": Run(("clif", "ti", "lora"), changes=KEPT),
    "customcontrast, kept": Run(("clif", "ti", "lora"), "customcontrast", changes=KEPT),
    "clif+customcontrast, kept": Run(("clif", "ti", "lora"), "clif+customcontrast", changes=KEPT),
    **{f"clif, kept w={w}": Run(("clif", "ti", "lora"), changes={"contrastive_weight": w}) for w in SWEPT_WEIGHTS},
    "clif, trust region": Run(("clif", "ti", "lora"), changes={"contrastive_weight": 0.0, "anchor_weight": 1.0}),
    "clif, lower rates": Run(
        ("clif", "ti", "lora"), changes={"contrastive_weight": 0.0, "lr": {"clif": 1e-3, "ti": 2e-4, "lora": 2e-4}}
    ),
}
DEFAULT_ROW = "CLIF + TI + joint LoRA (default pipeline)"
BASELINE_ROW = "TI + joint LoRA"
CLASS_WORD, TI_ONLY, TI_LORA, CLIF_ONE, CLIF_TI, DEFAULT, KEPT_TI, KEPT_LORA = (
    Row("class-word init (no training)", None, None),
    Row("TI only", "ti", "ti"),
    Row(BASELINE_ROW, "ti", "lora"),
    Row("CLIF stage 1", "clif", "clif"),
    Row("CLIF + TI", "clif", "ti"),
    Row(DEFAULT_ROW, "clif", "lora"),
    Row("CLIF + TI, stage-1 loss kept (w=1)", "clif, kept", "ti"),
    Row("CLIF + TI + joint LoRA, stage-1 loss kept (w=1)", "clif, kept", "lora"),
)
TI_REGIONS = Row("TI + joint LoRA, regions", "ti", "lora", "regions")
ROW_SETS = {
    "main": [
        CLASS_WORD, TI_ONLY, TI_LORA, CLIF_ONE, CLIF_TI, DEFAULT, KEPT_TI, KEPT_LORA,
        Row("CustomContrast stage 1", "customcontrast, kept", "clif"),
        Row("CustomContrast + TI + joint LoRA, stage-1 loss kept (w=1)", "customcontrast, kept", "lora"),
        Row("CLIF+CustomContrast stage 1", "clif+customcontrast, kept", "clif"),
        Row("CLIF+CustomContrast + TI + joint LoRA, stage-1 loss kept (w=1)", "clif+customcontrast, kept", "lora"),
        TI_REGIONS,
        Row("CLIF + TI + joint LoRA, stage-1 loss kept (w=1), regions", "clif, kept", "lora", "regions"),
    ],
    # The give-back and its remedies, each against the default (the CLIF reference), and the weight
    # of the kept stage-1 loss swept (SWEPT_WEIGHTS).
    "ablation": [
        CLIF_ONE, CLIF_TI, DEFAULT, KEPT_TI, KEPT_LORA,
        *(Row(f"CLIF + TI + joint LoRA, stage-1 loss kept (w={w})", f"clif, kept w={w}", "lora") for w in SWEPT_WEIGHTS),
        Row("CLIF + TI, trust region (λ=1)", "clif, trust region", "ti"),
        Row("CLIF + TI + joint LoRA, trust region (λ=1)", "clif, trust region", "lora"),
        Row("CLIF + TI, lower rates (ti, lora 2e-4)", "clif, lower rates", "ti"),
        Row("CLIF + TI + joint LoRA, lower rates (ti, lora 2e-4)", "clif, lower rates", "lora"),
    ],
    # The two training runs every comparison needs (TI, CLIF): the goal's rows and the give-back.
    "core": [CLASS_WORD, TI_ONLY, TI_LORA, CLIF_ONE, CLIF_TI, DEFAULT, TI_REGIONS],
    # The smoke run: two training runs per seed, one regional row.
    "quick": [CLASS_WORD, TI_ONLY, TI_LORA, CLIF_ONE, DEFAULT, TI_REGIONS],
}
SCORES = ("confusion", "leakage", "missing", "clean", "likeness")  # likeness: not in reports before stop 25
PAIRED = ("confusion", "likeness")  # each row over the default pipeline, paired over seeds


ORDERS = (NAMES, NAMES[::-1])
LEFT_HALF, RIGHT_HALF = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)


def prompts() -> list[str]:
    return [f"a photo of <{first}> and <{second}>" for first, second in ORDERS]


def row_regions(row: Row, first: str, second: str) -> tuple[Region, ...]:
    """The regions of a row's requests: none, or the first-named concept left and the second right."""
    if row.sampling == "plain":
        return ()
    if row.sampling == "regions":
        return (Region(f"a photo of <{first}>", box=LEFT_HALF), Region(f"a photo of <{second}>", box=RIGHT_HALF))
    raise ValueError(f"sampling {row.sampling!r} is not one of plain, regions")


def generate(world: World, packs, row: Row, seed: int, args) -> np.ndarray:
    """`args.images` images of the row's packs: half per prompt order, in requests of 8, fixed noise seeds
    (the same for every row, so plain and regional rows differ only in the regions)."""
    pipeline = torch_pipeline(world.base_dir, packs)
    batches = []
    for order, (prompt, names) in enumerate(zip(prompts(), ORDERS, strict=True)):
        regions = row_regions(row, *names)
        remaining = args.images // 2
        request_index = 0
        while remaining > 0:
            count = min(REQUEST_IMAGES, remaining)
            request = GenerationRequest(
                prompt, steps=args.sampling_steps, guidance_scale=args.guidance_scale,
                seed=100_000 * seed + 1_000 * order + request_index, num_images=count, regions=regions,
            )
            batches.append(to_uint8(pipeline.generate(request)))
            remaining -= count
            request_index += 1
    return np.concatenate(batches)


def train_run(run: Run, world: World, concepts, commons, seed: int, args, out: Path) -> tuple[dict[str, list], float]:
    """Train one run; return the packs after each of its stages and the seconds it took."""
    steps = {"clif": args.clif_steps, "ti": args.ti_steps, "lora": args.lora_steps}
    config = TrainConfig(
        concepts=concepts, commons=commons, out=out, model=str(world.base_dir), stages=run.stages,
        objective=run.objective, image_encoders=(str(world.clip_dir),), seed=seed, steps=steps, stage_packs=True,
        segmentation=SegmentationConfig(method="masks", min_area=0.005), **run.changes,
    )
    started = time.perf_counter()
    result = train(config)
    packs = {stage: [read_pack(path) for path in paths] for stage, paths in result.stage_packs.items()}
    return packs, time.perf_counter() - started


def run_seed(seed: int, world: World, rows: list[Row], args, work: Path, samples: dict) -> dict:
    """Every row on one seed: train the runs the rows need, generate, judge, score."""
    rng = np.random.default_rng(1000 + seed)
    pair = look_alike_pair(rng)
    concepts = tuple(
        ConceptSource(name, write_concept_folder(work / name, toy, rng, args.shots, args.shot_framing), toy.body_shape)
        for name, toy in zip(NAMES, pair, strict=True)
    )
    commons = write_common_folders(work, rng)
    regions, labels = held_out_regions(pair, rng, args.held_out)
    base = load_base_model(world.base_dir)
    tower = load_image_tower(world.clip_dir)
    region_features = tower.embed(regions)
    judge = load_judge(world.judge_dir)
    trained, train_seconds = {}, {}
    for name in dict.fromkeys(row.run for row in rows if row.run is not None):
        trained[name], train_seconds[name] = train_run(RUNS[name], world, concepts, commons, seed, args, work / "runs" / name)
    result = {"pair": [toy.caption() for toy in pair], "train_seconds": train_seconds, "rows": {}}
    if seed == 0:
        samples["concepts"] = [
            (f"<{name}>: {toy.caption()} (its first training image)", np.asarray(Image.open(concept.folder / "0.png")))
            for name, toy, concept in zip(NAMES, pair, concepts, strict=True)
        ]
    for row in rows:
        if row.run is None:
            packs = [new_pack(base, c.name, c.class_word) for c in concepts]
        else:
            packs = trained[row.run][row.stage]
        started = time.perf_counter()
        images = generate(world, packs, row, seed, args)
        objects = find_objects(judge, images)
        score = score_images([judge_image(found, pair) for found in objects])
        retrieval = retrieval_confusion(region_features, labels, concept_text_features(base, tower, packs))
        result["rows"][row.name] = {
            **score.to_dict(), "retrieval": retrieval, "embeddings": embedding_shift(packs, trained.get(row.run), base),
            "generate_and_judge_s": round(time.perf_counter() - started, 2),
        }
        if seed == 0:
            half = args.images // 2
            samples.setdefault("rows", []).append((row.name, images[: min(4, half)], images[half : half + min(4, half)]))
    return result


def embedding_shift(packs, run_packs: dict | None, base) -> dict:
    """How far the rows moved: relative distance from the class-word start and from the stage-1 result."""
    def rows(of) -> torch.Tensor:
        return torch.cat([pack.embeddings["text_encoder"] for pack in of])

    current = rows(packs)
    start = rows([new_pack(base, pack.name, pack.class_word) for pack in packs])
    shift = {"from_init": float((current - start).norm() / start.norm()), "norm_ratio": float(current.norm() / start.norm())}
    if run_packs is not None and "clif" in run_packs:
        stage_one = rows(run_packs["clif"])
        shift["from_stage1"] = float((current - stage_one).norm() / stage_one.norm())
    return shift


def summarise(per_seed: dict[int, dict], rows: list[Row]) -> dict:
    """Per row: mean and 95 % bootstrap interval over seeds of every score."""
    summary = {}
    has_default = DEFAULT_ROW in {row.name for row in rows}
    default = [per_seed[seed]["rows"][DEFAULT_ROW] for seed in per_seed] if has_default else []
    for row in rows:
        values = [per_seed[seed]["rows"][row.name] for seed in per_seed]
        entry = {key: mean_ci([v[key] for v in values]) for key in SCORES if key in values[0]}
        entry["objects_per_image"] = float(np.mean([v["objects_per_image"] for v in values]))
        for key in values[0]["embeddings"]:
            entry[f"embedding_{key}"] = float(np.mean([v["embeddings"][key] for v in values]))
        for key in ("calibrated", "raw"):
            entry[f"retrieval_{key}"] = mean_ci([v["retrieval"][key] for v in values])
        if has_default and row.name != DEFAULT_ROW:
            entry["vs_default"] = {
                key: ratio_ci([v[key] for v in values], [d[key] for d in default]) for key in PAIRED if key in values[0]
            }
        if row.run is not None:
            entry["train_seconds_mean"] = float(np.mean([per_seed[s]["train_seconds"][row.run] for s in per_seed]))
        summary[row.name] = entry
    return summary


def goal(per_seed: dict[int, dict], summary: dict) -> dict | None:
    """Default pipeline vs TI + joint LoRA: the paired ratio of confusion and whether the intervals overlap."""
    if DEFAULT_ROW not in summary or BASELINE_ROW not in summary:
        return None
    default = [per_seed[s]["rows"][DEFAULT_ROW]["confusion"] for s in per_seed]
    baseline = [per_seed[s]["rows"][BASELINE_ROW]["confusion"] for s in per_seed]
    ratio = ratio_ci(default, baseline)
    separate = summary[DEFAULT_ROW]["confusion"]["high"] < summary[BASELINE_ROW]["confusion"]["low"]
    return {"ratio": ratio, "intervals_separate": separate, "met": ratio["ratio"] <= 0.5 and separate}


def _cell(stats: dict) -> str:
    return f"{stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def markdown(report: dict) -> str:
    """The results as markdown."""
    settings, seeds = report["settings"], report["seeds"]
    lines = [
        f"# Confusion on generated images (synthetic world, {len(seeds)} of {report['seeds_planned']} planned seeds, "
        f"{settings['images']} images per row and seed)",
        "",
        "Prompts \"a photo of <ann> and <bob>\" and \"a photo of <bob> and <ann>\" (half the images each, the same",
        "noise seeds for every row). Confusion = leakage (share of matched objects showing the other concept's",
        "distinctive attribute) + missing (share of images without one of the concepts); lower is better.",
        "Clean = both concepts present, neither leaked. Likeness = share of the concepts' five attributes their",
        "matched objects show (confusion reads only the two distinctive ones). Retrieval = region->concept confusion of held-out part",
        "regions in the world CLIP's space (calibrated; 0.5 is chance). Mean over seeds [95 % bootstrap interval].",
        "",
        "Vs default: the row's confusion and likeness over the default pipeline's, paired over seeds [95 % paired",
        "bootstrap interval].",
        "",
        "| row | confusion | leakage | missing | clean | likeness | objects/image | retrieval (calibrated) | "
        "confusion vs default | likeness vs default | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in report["summary"].items():
        cells = [_cell(entry[k]) if k in entry else "-" for k in SCORES]
        seconds = f"{entry['train_seconds_mean']:.0f}" if "train_seconds_mean" in entry else "-"
        paired = entry.get("vs_default", {})
        versus = [f"{paired[k]['ratio']:.2f} [{paired[k]['low']:.2f}, {paired[k]['high']:.2f}]" if k in paired else "-"
                  for k in PAIRED]
        lines.append(f"| {name} | {' | '.join(cells)} | {entry['objects_per_image']:.2f} | "
                     f"{_cell(entry['retrieval_calibrated'])} | {' | '.join(versus)} | {seconds} |")
    lines += [
        "", "Where the concept rows went (means over seeds): relative distance from the class-word start and from",
        "the stage-1 result of the same run, norm relative to the start, and the raw retrieval confusion.", "",
        "| row | moved from start | moved from stage 1 | norm / start | retrieval (raw) |", "| --- | --- | --- | --- | --- |",
    ]
    for name, entry in report["summary"].items():
        stage_one = f"{entry['embedding_from_stage1']:.2f}" if "embedding_from_stage1" in entry else "-"
        lines.append(f"| {name} | {entry['embedding_from_init']:.2f} | {stage_one} | {entry['embedding_norm_ratio']:.2f} | "
                     f"{_cell(entry['retrieval_raw'])} |")
    if report.get("goal"):
        g = report["goal"]
        lines += ["", f"Goal (default pipeline <= 50 % of TI + joint LoRA, intervals apart): ratio {g['ratio']['ratio']:.2f} "
                  f"[{g['ratio']['low']:.2f}, {g['ratio']['high']:.2f}] (paired bootstrap), intervals apart: "
                  f"{'yes' if g['intervals_separate'] else 'no'} -> {'met' if g['met'] else 'not met'}."]
    lines += world_markdown(report["world"])
    lines += ["", f"Settings: {json.dumps(settings)}", f"Run time: {report['seconds']:.0f} s; "
              f"environment: {report['environment']['cpu']}, {report['environment']['cpu_count']} cores.", ""]
    return "\n".join(lines)


def world_markdown(world: dict) -> list[str]:
    """The world section: judge accuracy on held-out renders, VAE and drawing fidelity, build times."""
    judge = world["components"]["judge"]["held_out"]
    lines = [
        "", "## World", "",
        f"Judge on {judge['scenes']} held-out renders: recall {judge['recall']:.3f}, precision {judge['precision']:.3f}, "
        f"lowest attribute accuracy {judge['min_accuracy']:.3f} ({json.dumps({k: round(v, 3) for k, v in judge['accuracy'].items()})}).",
        f"Judge on VAE reconstructions: lowest attribute accuracy {world['vae']['reconstructions']['min_accuracy']:.3f}; "
        f"mean abs pixel error {world['vae']['mean_abs_pixel_error']:.1f}/255.",
    ]
    for section, how in (("drawing", "prompts"), ("drawing_class_words", "prompts naming each toy by its body shape only")):
        if section not in world:  # a report made before class-word prompts were scored
            continue
        for kind in ("1_toy", "2_toys"):
            fidelity = world[section][kind]
            lines.append(f"Drawing, {kind.replace('_', ' ')} {how} ({fidelity['prompts']}): attributes as prompted "
                         f"{json.dumps({k: round(v, 2) for k, v in fidelity['attribute_accuracy'].items()})}, "
                         f"object count right {fidelity['count_accuracy']:.2f}.")
    seconds = {k: v["seconds"] for k, v in world["components"].items()}
    lines.append(f"World build seconds (cached, not part of this run unless built now): {json.dumps(seconds)}; "
                 f"recipe {json.dumps(world['recipe'])}.")
    return lines


def world_section(world: World, args) -> dict:
    """The world's build report, VAE fidelity and drawing fidelity (judge on plain-text generations)."""
    from diffusers import AutoencoderKL

    judge = load_judge(world.judge_dir)
    rng = np.random.default_rng(77)
    scenes = [judge_scene(rng) for _ in range(args.fidelity_renders)]
    vae = AutoencoderKL.from_pretrained(world.base_dir / "vae").eval()
    pipeline = torch_pipeline(world.base_dir)
    drawing = {
        section: drawing_fidelity(pipeline, judge, args.fidelity_prompts, 0, args.sampling_steps, args.guidance_scale,
                                  class_words=section == "drawing_class_words")
        for section in ("drawing", "drawing_class_words")
    }
    return {**world.report(), "vae": vae_fidelity(vae, judge, scenes), **drawing}


def world_grid(world: World, args, path: Path) -> Path:
    """Prompt -> images for a few plain prompts (the README's sample grid)."""
    pipeline = torch_pipeline(world.base_dir)
    rows = []
    for index, (text, _) in enumerate(fidelity_prompts(8, 5)):
        request = GenerationRequest(text, steps=args.sampling_steps, guidance_scale=args.guidance_scale,
                                    seed=index, num_images=6)
        rows.append((text, to_uint8(pipeline.generate(request))))
    return sample_grid(rows, path, "The world model: prompt -> six samples (64x64, shown 2x)")


def reused_world_report(path: Path, world: World) -> dict:
    """The world section of a `--world-only` report, refused unless it describes this world's components."""
    section = json.loads(Path(path).read_text())["world"]
    if {key: section.get(key) for key in ("recipe", "components")} != world.report():
        raise SystemExit(f"--world-report {path}: it describes another world (components differ from {world.root})")
    return section


def world_only(world: World, args, started: float) -> dict:
    """Write the world's report (confusion_world.{json,md}) and its sample grid; no concepts are trained."""
    report = {"world": world_section(world, args), "settings": {k: v for k, v in vars(args).items() if k not in ("out", "world_root")},
              "environment": describe_environment({"shared_machine": True})}
    args.out.mkdir(parents=True, exist_ok=True)
    world_grid(world, args, args.out / "confusion_world_samples.png")
    report["seconds"] = time.perf_counter() - started
    (args.out / "confusion_world.json").write_text(json.dumps(report, indent=2))
    text = "\n".join(["# The confusion benchmark's world", *world_markdown(report["world"]), "",
                      f"Run time: {report['seconds']:.0f} s; environment: {report['environment']['cpu']}, "
                      f"{report['environment']['cpu_count']} cores (shared machine).", ""])
    (args.out / "confusion_world.md").write_text(text)
    print(text)
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=None, choices=sorted(ROW_SETS), help="row set (default: main; quick with --quick)")
    parser.add_argument("--seeds", type=int, default=10, help="concept pairs: this many seeds (default 10)")
    parser.add_argument("--seed-start", type=int, default=0, help="the first seed (a shard of a split run; default 0)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="REPORT",
                        help="merge the <stem>.json reports of shards of one run into --out; nothing is run")
    parser.add_argument("--images", type=int, default=32, help="generated images per row and seed (default 32)")
    parser.add_argument("--clif-steps", type=int, default=200, help="stage-1 steps (training default)")
    parser.add_argument("--ti-steps", type=int, default=200, help="textual-inversion steps (training default)")
    parser.add_argument("--lora-steps", type=int, default=200, help="joint LoRA steps (training default)")
    parser.add_argument("--shots", type=int, default=4, help="training images per concept")
    parser.add_argument("--shot-framing", choices=FRAMINGS, default="close",
                        help="how the concept's training photos frame it: close-ups only (default), or varied sizes and places")
    parser.add_argument("--held-out", type=int, default=40, help="held-out renders per concept for retrieval")
    parser.add_argument("--sampling-steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance (default 7.5)")
    parser.add_argument("--fidelity-prompts", type=int, default=64, help="plain prompts for the world's drawing fidelity")
    parser.add_argument("--fidelity-renders", type=int, default=300, help="held-out renders for the VAE fidelity")
    parser.add_argument("--world-part", choices=sorted(COMPONENT_FIELDS), action="append", default=None,
                        help="only build these world components and stop (run vae, clip and judge as separate processes at once)")
    parser.add_argument("--world-only", action="store_true",
                        help="only the world: judge accuracy, VAE and drawing fidelity, sample grid (confusion_world.*)")
    parser.add_argument("--world-report", type=Path, default=None, metavar="JSON",
                        help="take the world section (and its sample grid) from a --world-only run's confusion_world.json "
                             "of the same world instead of measuring it again")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny world, 2 seeds, 4 images, 2 steps")
    parser.add_argument("--world-root", type=Path, default=None, help="world cache folder (default: cache_dir()/worlds)")
    parser.add_argument("--world-unet-stop", type=int, default=None,
                        help="use a world whose UNet stopped at this step of its schedule (a world cut short)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help=f"folder for the results (default: {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick and args.out is None:
        parser.error("--quick writes smoke-run results; give --out (the committed results stay as they are)")
    args.out = args.out or RESULTS
    if args.merge:
        return merge_shards(args.merge, args.out)
    args.rows = args.rows or ("quick" if args.quick else "main")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = WorldRecipe(unet_stop=args.world_unet_stop)
    if args.quick:
        recipe = QUICK_RECIPE
        for name, value in dict(seeds=2, images=4, clif_steps=2, ti_steps=2, lora_steps=2, held_out=2,
                                sampling_steps=2, fidelity_prompts=4, fidelity_renders=8).items():
            setattr(args, name, value)
    started = time.perf_counter()
    if args.world_part:
        build_world(recipe, args.world_root, tuple(args.world_part))
        return {"built": args.world_part}
    world = build_world(recipe, args.world_root)
    if args.world_only:
        return world_only(world, args, started)
    rows = ROW_SETS[args.rows]
    stem = "confusion" if args.rows in ("main", "quick") else f"confusion_{args.rows}"
    samples: dict = {}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.world_report:
        world_report = reused_world_report(args.world_report, world)
        copy_into(args.world_report.with_name("confusion_world_samples.png"), args.out)
    else:
        world_report = world_section(world, args)
        if args.rows in ("main", "core", "quick"):
            world_grid(world, args, args.out / "confusion_world_samples.png")
    per_seed: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="clif-confusion-") as tmp:
        for seed in range(args.seed_start, args.seed_start + args.seeds):  # rewritten after every seed: a cut run keeps what it did
            per_seed[seed] = run_seed(seed, world, rows, args, Path(tmp) / f"seed{seed}", samples)
            report = write_report(args, stem, per_seed, world_report, samples, started)
    print(markdown(report))
    return report


def write_report(args, stem: str, per_seed: dict[int, dict], world_report: dict, samples: dict,
                 started: float) -> dict:
    """Summarise the seeds done so far and write `<stem>.json`, `<stem>.md` and the seed-0 sample grid."""
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out", "world_root", "merge")}
    report = summarised_report(args.rows, per_seed, args.seeds, settings, world_report)
    report |= {"environment": describe_environment({"shared_machine": True}), "seconds": time.perf_counter() - started}
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(markdown(report))
    grid_rows = [(label, image[None]) for label, image in samples.get("concepts", [])]
    for name, first, second in samples.get("rows", []):
        grid_rows.append((f"{name}: <ann> and <bob> | <bob> and <ann>", np.concatenate([first, second])))
    if grid_rows:  # a shard without seed 0 has no samples
        sample_grid(grid_rows, args.out / f"{stem}_samples.png", "Seed 0, the same noise for every row")
    return report


def summarised_report(rows_set: str, per_seed: dict, seeds_planned: int, settings: dict, world_report: dict) -> dict:
    """The report's figures: every row summarised over the seeds done, and the goal."""
    summary = summarise(per_seed, ROW_SETS[rows_set])
    return {
        "rows_set": rows_set, "seeds": list(per_seed), "seeds_planned": seeds_planned, "settings": settings,
        "summary": summary, "goal": goal(per_seed, summary), "world": world_report, "per_seed": per_seed,
    }


def run_settings(report: dict) -> dict:
    """A report's settings without those that differ between shards of one run (which seeds)."""
    return {k: v for k, v in report["settings"].items() if k not in ("seed_start", "seeds")}


def copy_into(path: Path, folder: Path) -> None:
    """Copy `path` into `folder` under its name, if it exists and is not that file already."""
    target = folder / path.name
    if path.exists() and path.resolve() != target.resolve():
        target.write_bytes(path.read_bytes())


def merge_shards(paths: list[Path], out: Path) -> dict:
    """One report from the reports of shards of one run (same rows and settings, disjoint seeds).

    Writes `<stem>.json` / `<stem>.md` into `out` and copies the seed-0 sample grid from its shard.
    """
    shards = [json.loads(Path(path).read_text()) for path in paths]
    first = shards[0]
    fixed = run_settings(first)
    per_seed: dict = {}
    for path, shard in zip(paths, shards, strict=True):
        if shard["rows_set"] != first["rows_set"] or run_settings(shard) != fixed:
            raise SystemExit(f"{path}: rows or settings differ from {paths[0]}; shards of one run only")
        overlap = set(per_seed) & set(shard["per_seed"])
        if overlap:
            raise SystemExit(f"{path}: seeds {sorted(overlap)} are in two shards")
        per_seed |= shard["per_seed"]
    per_seed = dict(sorted(per_seed.items(), key=lambda item: int(item[0])))
    settings = {**fixed, "seeds": len(per_seed), "seed_start": min(map(int, per_seed)), "shards": [str(p) for p in paths]}
    report = summarised_report(first["rows_set"], per_seed, sum(s["seeds_planned"] for s in shards), settings, first["world"])
    report |= {"environment": first["environment"], "seconds": sum(s["seconds"] for s in shards),
               "seconds_per_shard": [round(s["seconds"]) for s in shards]}
    stem = Path(paths[0]).stem
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(markdown(report))
    for path, shard in zip(paths, shards, strict=True):
        if "0" in shard["per_seed"]:
            copy_into(Path(path).with_name(f"{stem}_samples.png"), out)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
