"""Synthetic non-confusion benchmark: region->concept retrieval confusion, before vs after CLIF.

World: two-part toys (a body: shape, colour, texture; a head: shape, colour) drawn with PIL on
tinted backgrounds, captioned "a red striped circle with a blue square". A tiny CLIP (the tiny
base model's text-encoder shape, a tiny ViT) is trained on the world, its text tower becomes the
text encoder of a copy of the `tiny` base model, and the tiny UNet is trained briefly on the
world's latents with it, so textual inversion has a (weak) signal. Per seed, two LOOK-ALIKE
concepts share body shape, body colour and head shape and differ only in body texture and head
colour; each is learned from 4 images by `clif_serve.training.train` under each row's recipe.

Stage 1 is trained on the renderer's part masks (the `masks` segmentation, standing in for the
SAM masks of the CLIF paper; `--segmentation slic` uses superpixels instead).

Metric: held-out images of each concept, alone and side by side, are cut along their ground-truth
part masks; each part region is embedded by the CLIP image tower and assigned to whichever of
"a photo of <A>" / "a photo of <B>" is closer (cosine). Confusion = share of regions assigned to
the wrong concept (an exact tie counts one half). `raw` uses the cosines as they are;
`calibrated` first subtracts each caption's mean cosine over all held-out regions (look-alike
captions often differ by a near-constant offset that sends every region to one concept).
Rows share seeds, images and the world; the world (CLIP, UNet) is trained once with seed 0 and
the seeds vary the concept pair, its training and held-out renders, and the training seed.

    .venv/bin/python benchmarks/confusion.py            # writes benchmarks/results/confusion.{json,md}
    .venv/bin/python benchmarks/confusion.py --world /tmp/world   # keep the trained world for reruns
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from transformers import CLIPModel

from clif_serve.concepts.pack import read_pack
from clif_serve.concepts.prompt import PromptEncoder
from clif_serve.models.concept_text_encoder import ConceptTextEncoder
from clif_serve.models.loading import load_base_model
from clif_serve.models.tiny import embedded_model_dir
from clif_serve.training.config import CommonSource, ConceptSource, TrainConfig
from clif_serve.training.contrastive import project_text
from clif_serve.training.diffusion import pixel_batch
from clif_serve.training.image_tower import ImageTower, load_image_tower, tiny_clip_config
from clif_serve.training.segmentation import SegmentationConfig, region_crop
from clif_serve.training.trainer import train

COLOURS = {
    "red": (205, 45, 45), "green": (45, 160, 70), "blue": (45, 80, 205), "yellow": (225, 200, 45),
    "purple": (140, 65, 175), "orange": (240, 135, 35), "black": (35, 35, 35), "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "star")  # single tokens of the tiny vocabulary
TEXTURES = ("plain", "striped", "dotted")
SIZE = 64
RESULTS = Path(__file__).resolve().parent / "results"
# Row name -> (stage-1 objective or None, run textual inversion after it).
ROWS = {
    "class-word init (no training)": (None, False),
    "TI only": (None, True),
    "CLIF stage 1": ("clif", False),
    "CLIF stage 1 + TI": ("clif", True),
    "customcontrast": ("customcontrast", False),
    "customcontrast + TI": ("customcontrast", True),
    "clif+customcontrast": ("clif+customcontrast", False),
    "clif+customcontrast + TI": ("clif+customcontrast", True),
}


@dataclass(frozen=True)
class Toy:
    """A two-part object of the world."""

    body_shape: str
    body_colour: str
    texture: str
    head_shape: str
    head_colour: str

    def caption(self) -> str:
        texture = "" if self.texture == "plain" else f"{self.texture} "
        return f"a {self.body_colour} {texture}{self.body_shape} with a {self.head_colour} {self.head_shape}"


def random_toy(rng: np.random.Generator) -> Toy:
    colours = list(COLOURS)
    return Toy(
        SHAPES[rng.integers(4)], colours[rng.integers(8)], TEXTURES[rng.integers(3)],
        SHAPES[rng.integers(4)], colours[rng.integers(8)],
    )


def shape_mask(shape: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean mask of a shape filling `box` (left, top, right, bottom) on the canvas."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask)
    left, top, right, bottom = box
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    elif shape == "triangle":
        draw.polygon([(middle_x, top), (right, bottom), (left, bottom)], fill=255)
    else:
        radius, inner = (right - left) / 2, (right - left) / 5
        points = [
            (middle_x + r * np.sin(a), middle_y - r * np.cos(a))
            for k in range(10)
            for r, a in [((radius, inner)[k % 2], k * np.pi / 5)]
        ]
        draw.polygon(points, fill=255)
    return np.asarray(mask) > 0


def paint(pixels: np.ndarray, mask: np.ndarray, colour: str, texture: str) -> None:
    """Fill `mask` with a colour and a texture (stripes or dots in a darker shade)."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    base = np.array(COLOURS[colour], dtype=np.float32)
    pattern = {"plain": np.zeros_like(mask), "striped": (cols // 3) % 2 == 0,
               "dotted": ((rows % 6) < 2) & ((cols % 6) < 2)}[texture]
    shade = np.where(pattern[..., None], base * 0.45, base)
    pixels[mask] = shade[mask]


def render(toys: list[Toy], rng: np.random.Generator) -> tuple[Image.Image, list[dict[str, np.ndarray]]]:
    """One image with the toys side by side; returns the part masks of each toy."""
    tint = rng.integers(190, 240, 3)
    pixels = np.broadcast_to(tint, (SIZE, SIZE, 3)).astype(np.float32).copy()
    slot = SIZE // len(toys)
    parts = []
    for index, toy in enumerate(toys):
        body_size = int(rng.integers(slot * 5 // 8, slot * 7 // 8)) if len(toys) > 1 else int(rng.integers(28, 38))
        head_size = max(8, body_size // 2)
        left = index * slot + int(rng.integers(0, max(1, slot - body_size)))
        top = int(rng.integers(head_size - 2, SIZE - body_size))
        body = shape_mask(toy.body_shape, (left, top, left + body_size, top + body_size))
        head_left = left + int(rng.integers(0, body_size - head_size + 1))
        head = shape_mask(toy.head_shape, (head_left, top - head_size + 4, head_left + head_size, top + 4))
        paint(pixels, body & ~head, toy.body_colour, toy.texture)
        paint(pixels, head, toy.head_colour, "plain")
        parts.append({"body": body & ~head, "head": head})
    return Image.fromarray(pixels.astype(np.uint8)), parts


def world_pool(count: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """Captioned world images: single toys (70 %), pairs (20 %) and lone parts (10 %)."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.7:
            toy = random_toy(rng)
            images.append(render([toy], rng)[0])
            captions.append(toy.caption())
        elif kind < 0.9:
            toys = [random_toy(rng), random_toy(rng)]
            images.append(render(toys, rng)[0])
            captions.append(f"{toys[0].caption()} and {toys[1].caption()}")
        else:
            toy = random_toy(rng)
            image, parts = render([toy], rng)
            part = "head" if rng.random() < 0.5 else "body"
            images.append(region_crop(image, parts[0][part]).resize((SIZE, SIZE)))
            if part == "head":
                captions.append(f"a {toy.head_colour} {toy.head_shape}")
            else:
                texture = "" if toy.texture == "plain" else f"{toy.texture} "
                captions.append(f"a {toy.body_colour} {texture}{toy.body_shape}")
    return images, captions


def train_world_clip(base, images, captions, steps: int, seed: int) -> CLIPModel:
    """A tiny CLIP whose text tower has the tiny base encoder's shape and vocabulary."""
    torch.manual_seed(seed)
    text = base.text_encoders[0].config
    config = tiny_clip_config(vocab_size=text.vocab_size, text_hidden=text.hidden_size, image_size=SIZE, patch_size=8)
    config.text_config.bos_token_id, config.text_config.eos_token_id = text.bos_token_id, text.eos_token_id
    config.text_config.pad_token_id = text.pad_token_id
    clip = CLIPModel(config)
    tower = ImageTower(clip.vision_model, clip.text_projection, 1.0)  # only for its preprocessing
    pixels = tower.preprocess(images)
    # Captions are short: 32 positions suffice (pooling reads the first end-of-text token).
    ids = base.tokenizers[0](
        captions, padding="max_length", truncation=True, max_length=32, return_tensors="pt"
    ).input_ids
    optimizer = torch.optim.AdamW(clip.parameters(), lr=2e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    clip.train()
    for _ in range(steps):
        index = torch.randperm(len(images), generator=generator)[:128]
        loss = clip(input_ids=ids[index], pixel_values=pixels[index], return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return clip.eval().requires_grad_(False)


def build_world_base(work: Path, steps: dict[str, int], seed: int) -> tuple[Path, Path, dict]:
    """Train the world's CLIP and UNet; return (base folder, CLIP folder, timings)."""
    timings = {}
    started = time.perf_counter()
    base_dir, clip_dir = work / "base", work / "clip"
    shutil.copytree(embedded_model_dir("tiny"), base_dir)
    base = load_base_model(base_dir)
    images, captions = world_pool(2000, seed)
    clip = train_world_clip(base, images, captions, steps["clip"], seed)
    clip.save_pretrained(clip_dir)
    clip.text_model.save_pretrained(base_dir / "text_encoder")  # a CLIPTextModel in transformers 5
    timings["clip_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    base = load_base_model(base_dir)
    train_world_unet(base, images[:600], captions[:600], steps["unet"], seed)
    base.unet.save_pretrained(base_dir / "unet")
    timings["unet_s"] = round(time.perf_counter() - started, 1)
    return base_dir, clip_dir, timings


def train_world_unet(base, images, captions, steps: int, seed: int, batch: int = 16) -> None:
    """ε-prediction training of the tiny UNet on world latents, conditioned on the world text encoder."""
    from diffusers import DDPMScheduler

    encoder = ConceptTextEncoder(base.text_encoders[0], base.spec.text_encoders[0])
    ids = base.tokenizers[0](captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = torch.cat([encoder(ids[i : i + 256], torch.zeros(len(ids[i : i + 256]), 1, base.spec.text_encoders[0].hidden_size))[0]
                            for i in range(0, len(ids), 256)])
        latents = torch.cat([base.vae.encode(pixel_batch(images[i : i + 256], SIZE)).latent_dist.mean
                             for i in range(0, len(images), 256)]) * base.spec.vae_scaling_factor
    scheduler = DDPMScheduler.from_config(base.spec.scheduler_config)
    unet = base.unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(len(images), (batch,), generator=generator)
        noise = torch.randn(latents[index].shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch,), generator=generator)
        prediction = unet(scheduler.add_noise(latents[index], noise, timesteps), timesteps, hidden[index]).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval().requires_grad_(False)


def look_alike_pair(rng: np.random.Generator) -> tuple[Toy, Toy]:
    """Two toys with the same body shape, body colour and head shape; texture and head colour differ."""
    first = random_toy(rng)
    textures = [t for t in TEXTURES if t != first.texture]
    colours = [c for c in COLOURS if c not in (first.head_colour, first.body_colour)]
    second = replace(first, texture=textures[rng.integers(len(textures))], head_colour=colours[rng.integers(len(colours))])
    return first, second


def write_folders(work: Path, pair: tuple[Toy, Toy], rng: np.random.Generator, shots: int) -> dict[str, Path]:
    """Training images (with their part masks in masks/) of both concepts and of two common toys."""
    folders = {}
    for name, toy in zip(("ann", "bob"), pair, strict=True):
        folders[name] = work / name
        (folders[name] / "masks").mkdir(parents=True)
        for index in range(shots):
            image, parts = render([toy], rng)
            image.save(folders[name] / f"{index}.png")
            for part, mask in parts[0].items():
                Image.fromarray(mask.astype(np.uint8) * 255).save(folders[name] / "masks" / f"{index}_{part}.png")
    for index in range(2):
        common = random_toy(rng)
        folder = work / f"common{index}"
        folder.mkdir(parents=True)
        for shot in range(3):
            render([common], rng)[0].save(folder / f"{shot}.png")
        folders[f"common{index}:{common.caption()[2:]}"] = folder
    return folders


def held_out_regions(pair: tuple[Toy, Toy], rng: np.random.Generator, count: int) -> tuple[list[Image.Image], list[int]]:
    """Part regions (body, head) of held-out images: each concept alone, and both side by side."""
    regions, labels = [], []
    for _ in range(count):
        for label, toy in enumerate(pair):
            image, parts = render([toy], rng)
            for mask in parts[0].values():
                regions.append(region_crop(image, mask))
                labels.append(label)
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        image, parts = render([pair[i] for i in order], rng)
        for label, toy_parts in zip(order, parts, strict=True):
            for mask in toy_parts.values():
                if mask.any():
                    regions.append(region_crop(image, mask))
                    labels.append(label)
    return regions, labels


def confusion(base, tower: ImageTower, packs, region_features: torch.Tensor, labels: list[int]) -> dict[str, float]:
    """Share of regions assigned to the wrong concept (ties count one half).

    `raw`: nearest of "a photo of <ann>" / "a photo of <bob>" by cosine. `calibrated`: the same
    after subtracting each caption's mean score over all held-out regions, which removes a global
    preference for one caption (with look-alikes a tiny offset otherwise sends every region to the
    same concept, and raw confusion sits at 0.5 whatever the embeddings separate).
    """
    encoder = ConceptTextEncoder(base.text_encoders[0], base.spec.text_encoders[0])
    encoded = PromptEncoder(base.tokenizers, base.spec).encode(
        ["a photo of <ann>", "a photo of <bob>"], {pack.trigger: pack for pack in packs}
    )
    with torch.no_grad():
        pooled = encoder(encoded.input_ids[0], encoded.concept_tables[0])[1]
        text = F.normalize(project_text(encoder, tower, pooled), dim=-1)
    scores = F.normalize(region_features, dim=-1) @ text.T
    truth = torch.tensor(labels)
    rows = torch.arange(len(truth))

    def wrong_share(values: torch.Tensor) -> float:
        own, other = values[rows, truth], values[rows, 1 - truth]
        return float(((other > own + 1e-6).float() + 0.5 * ((other - own).abs() <= 1e-6).float()).mean())

    return {"raw": wrong_share(scores), "calibrated": wrong_share(scores - scores.mean(dim=0, keepdim=True))}


def run_seed(seed: int, base_dir: Path, clip_dir: Path, args, work: Path) -> dict[str, dict]:
    """Every row on one seed's concept pair; returns row -> {confusion, seconds}."""
    rng = np.random.default_rng(1000 + seed)
    pair = look_alike_pair(rng)
    folders = write_folders(work, pair, rng, args.shots)
    base = load_base_model(base_dir)
    tower = load_image_tower(clip_dir)
    regions, labels = held_out_regions(pair, rng, args.held_out)
    features = tower.embed(regions)
    commons = tuple(CommonSource(key.split(":", 1)[1], path) for key, path in folders.items() if ":" in key)
    concepts = tuple(ConceptSource(name, folders[name], pair[0].body_shape) for name in ("ann", "bob"))
    results = {"pair": [pair[0].caption(), pair[1].caption()], "regions": len(labels)}
    for row, (objective, with_ti) in ROWS.items():
        stages = tuple(s for s, on in (("clif", objective is not None), ("ti", with_ti)) if on) or ("clif",)
        config = TrainConfig(
            concepts=concepts, commons=commons, out=work / "runs" / row.replace(" ", "_"), model=str(base_dir),
            stages=stages, image_encoders=(str(clip_dir),), objective=objective or "clif", seed=seed,
            segmentation=SegmentationConfig(method=args.segmentation, min_area=0.005),
            steps={"clif": args.clif_steps if objective else 0, "ti": args.ti_steps, "lora": 0},
        )
        started = time.perf_counter()
        packs = [read_pack(path) for path in train(config).packs]
        results[row] = {**confusion(base, tower, packs, features, labels),
                        "seconds": round(time.perf_counter() - started, 2)}
    return results


def summarise(per_seed: dict[int, dict]) -> dict[str, dict]:
    """Per row and metric: mean, sample standard deviation, min and max over seeds."""
    summary = {}
    for row in ROWS:
        summary[row] = {"seconds_mean": statistics.fmean(per_seed[seed][row]["seconds"] for seed in per_seed)}
        for metric in ("calibrated", "raw"):
            values = [per_seed[seed][row][metric] for seed in per_seed]
            summary[row][metric] = {
                "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values),
            }
    return summary


def markdown(report: dict) -> str:
    """The markdown table of a report."""
    seeds = report["seeds"]
    reference = report["summary"]["TI only"]["calibrated"]["mean"]
    lines = [
        f"# Region->concept confusion (synthetic world, seeds {seeds[0]}..{seeds[-1]}, {len(seeds)} seeds)",
        "",
        "Share of held-out part regions assigned to the wrong concept; lower is better, 0.5 is chance.",
        "Calibrated removes each caption's mean score first (see benchmarks/confusion.py); change is of",
        "the calibrated mean against TI only. Spread: sample std over seeds, and [min, max].",
        "",
        "| row | calibrated mean ± std [min, max] | raw mean ± std [min, max] | vs TI only | train s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row, stats in report["summary"].items():
        cells = [
            f"{m['mean']:.3f} ± {m['std']:.3f} [{m['min']:.3f}, {m['max']:.3f}]"
            for m in (stats["calibrated"], stats["raw"])
        ]
        change = (stats["calibrated"]["mean"] - reference) / reference if reference else float("nan")
        lines.append(f"| {row} | {cells[0]} | {cells[1]} | {change:+.0%} | {stats['seconds_mean']:.1f} |")
    lines += ["", f"World: {json.dumps(report['world'])}", f"Settings: {json.dumps(report['settings'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="concept pairs (seeds 0..N-1; default 5)")
    parser.add_argument("--clip-steps", type=int, default=300, help="world CLIP training steps")
    parser.add_argument("--unet-steps", type=int, default=100, help="world UNet training steps")
    parser.add_argument("--clif-steps", type=int, default=150, help="stage-1 steps per row")
    parser.add_argument("--ti-steps", type=int, default=50, help="textual-inversion steps per row")
    parser.add_argument("--shots", type=int, default=4, help="training images per concept")
    parser.add_argument("--held-out", type=int, default=8, help="held-out renders per concept (and pairs)")
    parser.add_argument("--segmentation", default="masks", choices=("masks", "slic", "felzenszwalb"),
                        help="regions for stage 1: the renderer's part masks (default) or superpixels")
    parser.add_argument("--world", type=Path, default=None, help="keep (or reuse) the trained world in this folder")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for confusion.json / confusion.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clif-confusion-") as tmp:
        work = Path(tmp)
        world_dir = args.world or work / "world"
        if (world_dir / "world.json").is_file():
            base_dir, clip_dir, world = world_dir / "base", world_dir / "clip", json.loads((world_dir / "world.json").read_text())
        else:
            world_steps = {"clip": args.clip_steps, "unet": args.unet_steps}
            base_dir, clip_dir, world = build_world_base(world_dir, world_steps, 0)
            world.update(world_steps)
            (world_dir / "world.json").write_text(json.dumps(world))
        per_seed = {seed: run_seed(seed, base_dir, clip_dir, args, work / f"seed{seed}") for seed in range(args.seeds)}
    report = {
        "seeds": list(range(args.seeds)), "world": world,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "world")},
        "summary": summarise(per_seed), "per_seed": per_seed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "confusion.json").write_text(json.dumps(report, indent=2))
    (args.out / "confusion.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
