"""The judge: a pixel classifier trained only on the renderer's ground truth, and the objects it finds.

`JudgeNet` (a small fully convolutional encoder-decoder) labels every pixel of a 64x64 image with
its part (background / body / head), the colour of that part, the body's texture (body pixels) and
the shape of that part. It is trained on renders of the world (0-3 toys of random sizes at random
places, `world.render_scattered`), with generic corruptions — blur, noise, brightness/contrast
jitter — and never on anything the pipeline made. `find_objects` turns its output into objects:
connected components of foreground pixels (gaps of one pixel bridged), each attribute read by averaging the class
probabilities over the pixels of the part it belongs to. Touching toys become one object; the
metric then sees one concept missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy import ndimage
from torch import nn
from tqdm import tqdm

from clif_serve.evaluation.world import (
    ATTRIBUTES,
    COLOURS,
    PARTS,
    SHAPES,
    SIZE,
    TEXTURES,
    Scene,
    captioned_scene,
    random_toy,
    render_scattered,
)

HEADS = {"part": PARTS, "colour": tuple(COLOURS), "texture": TEXTURES, "shape": SHAPES}
IGNORE = -100
WEIGHTS_FILE = "judge.safetensors"
CONFIG_FILE = "judge.json"


def _block(channels_in: int, channels_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=dilation, dilation=dilation),
        nn.GroupNorm(8, channels_out), nn.SiLU(),
        nn.Conv2d(channels_out, channels_out, 3, padding=1), nn.GroupNorm(8, channels_out), nn.SiLU(),
    )


class JudgeNet(nn.Module):
    """Per-pixel logits for part, colour, texture and shape: `[N, sum(len(classes)), H, W]`."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.width = width
        self.down = nn.ModuleList([
            _block(3, width), _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2),
            _block(4 * width, 4 * width, 2), _block(4 * width, 4 * width, 1, 2),
        ])
        self.up = nn.ModuleList([
            _block(8 * width, 4 * width), _block(8 * width, 2 * width), _block(4 * width, width),
        ])
        self.head = nn.Conv2d(2 * width, sum(len(classes) for classes in HEADS.values()), 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        skips = []
        x = pixels
        for block in self.down[:4]:
            x = block(x)
            skips.append(x)
        x = self.down[4](x)
        for block, skip in zip(self.up, reversed(skips[1:]), strict=True):
            x = block(torch.cat([x, skip], dim=1))
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.head(torch.cat([x, skips[0]], dim=1))


def split_logits(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-head logits of `JudgeNet`'s output."""
    return dict(zip(HEADS, torch.split(logits, [len(c) for c in HEADS.values()], dim=1), strict=True))


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` -> float `[N, 3, H, W]` in [-1, 1]."""
    return torch.from_numpy(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0


def targets(scene: Scene) -> dict[str, np.ndarray]:
    """Ground-truth maps of a render (IGNORE where a head does not apply)."""
    maps = {name: np.full((SIZE, SIZE), IGNORE, dtype=np.int64) for name in HEADS}
    maps["part"] = scene.part.copy()
    for index, toy in enumerate(scene.toys):
        body, head = scene.mask(index, "body"), scene.mask(index, "head")
        maps["colour"][body] = list(COLOURS).index(toy.body_colour)
        maps["colour"][head] = list(COLOURS).index(toy.head_colour)
        maps["texture"][body] = TEXTURES.index(toy.texture)
        maps["shape"][body] = SHAPES.index(toy.body_shape)
        maps["shape"][head] = SHAPES.index(toy.head_shape)
    return maps


def judge_scene(rng: np.random.Generator) -> Scene:
    """A training/evaluation layout for the judge: 0-3 toys, or a scene of the world's own kinds."""
    if rng.random() < 0.3:
        return captioned_scene(rng)[0]
    return render_scattered([random_toy(rng) for _ in range(int(rng.integers(0, 4)))], rng)


def corrupt(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Generic image corruptions (not the pipeline's): Gaussian blur, noise, brightness/contrast jitter."""
    count = len(pixels)
    sigma = torch.rand(count, generator=generator) * 1.2
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    channels = pixels.shape[1]
    weights = kernels.repeat_interleave(channels, dim=0)[:, None]  # one kernel per image channel
    flat = F.pad(pixels.reshape(1, count * channels, *pixels.shape[2:]), (radius,) * 4, mode="replicate")
    flat = F.conv2d(flat, weights[..., None, :], groups=count * channels)
    out = F.conv2d(flat, weights[..., None], groups=count * channels).reshape(pixels.shape)
    contrast = 1 + (torch.rand(count, 1, 1, 1, generator=generator) - 0.5) * 0.2
    brightness = (torch.rand(count, 1, 1, 1, generator=generator) - 0.5) * 0.12
    noise = torch.randn(out.shape, generator=generator) * torch.rand(count, 1, 1, 1, generator=generator) * 0.06
    return (out * contrast + brightness + noise).clamp(-1, 1)


def _batch(rng: np.random.Generator, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    scenes = [judge_scene(rng) for _ in range(size)]
    pixels = to_pixels(np.stack([np.asarray(scene.image) for scene in scenes]))
    maps = [targets(scene) for scene in scenes]
    return pixels, {name: torch.from_numpy(np.stack([m[name] for m in maps])) for name in HEADS}


def judge_loss(net: JudgeNet, pixels: torch.Tensor, truth: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = split_logits(net(pixels))
    return sum(F.cross_entropy(logits[name], truth[name], ignore_index=IGNORE) for name in HEADS)


def train_judge(steps: int, seed: int, batch_size: int = 32, lr: float = 2e-3, width: int = 24) -> JudgeNet:
    """Train a judge on fresh renders (seeded); cosine learning-rate decay."""
    torch.manual_seed(seed)
    net = JudgeNet(width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in tqdm(range(steps), desc="judge", unit="step"):
        pixels, truth = _batch(rng, batch_size)
        loss = judge_loss(net, corrupt(pixels, generator), truth)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval().requires_grad_(False)


def save_judge(net: JudgeNet, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"width": net.width}))


def load_judge(folder: Path) -> JudgeNet:
    config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    net = JudgeNet(config["width"])
    net.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
    return net.eval().requires_grad_(False)


@dataclass
class JudgedObject:
    """An object the judge found: its pixels' box, area, centroid and attribute values (None: part not seen)."""

    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive)
    area: int
    centroid: tuple[float, float]  # x, y
    attributes: dict[str, str | None] = field(default_factory=dict)
    mask: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("mask")
        return data


def _vote(probabilities: torch.Tensor, pixels: np.ndarray, classes: tuple[str, ...], min_pixels: int) -> str | None:
    if pixels.sum() < min_pixels:
        return None
    return classes[int(probabilities[:, torch.from_numpy(pixels)].mean(dim=1).argmax())]


@torch.no_grad()
def find_objects(
    net: JudgeNet, images: np.ndarray, min_area: int = 24, min_part: int = 4, batch_size: int = 64
) -> list[list[JudgedObject]]:
    """Objects in each uint8 image `[N, 64, 64, 3]`: components of foreground pixels, largest first."""
    found = []
    for start in range(0, len(images), batch_size):
        logits = net(to_pixels(images[start : start + batch_size]))
        for heads in (dict(zip(HEADS, parts, strict=True)) for parts in zip(*split_logits(logits).values(), strict=True)):
            probabilities = {name: torch.softmax(value, dim=0) for name, value in heads.items()}
            part = probabilities["part"].argmax(dim=0).numpy()
            foreground = part > 0
            # Parts a pixel or two apart (a head drawn just above its body) belong to one object.
            labels, count = ndimage.label(ndimage.binary_dilation(foreground))
            labels[~foreground] = 0
            objects = []
            for label in range(1, count + 1):
                inside = labels == label
                area = int(inside.sum())
                if area < min_area:
                    continue
                body, head = inside & (part == PARTS.index("body")), inside & (part == PARTS.index("head"))
                rows, cols = np.nonzero(inside)
                attributes = {
                    "body_shape": _vote(probabilities["shape"], body, SHAPES, min_part),
                    "body_colour": _vote(probabilities["colour"], body, tuple(COLOURS), min_part),
                    "texture": _vote(probabilities["texture"], body, TEXTURES, min_part),
                    "head_shape": _vote(probabilities["shape"], head, SHAPES, min_part),
                    "head_colour": _vote(probabilities["colour"], head, tuple(COLOURS), min_part),
                }
                objects.append(JudgedObject(
                    (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1), area,
                    (float(cols.mean()), float(rows.mean())), attributes, inside,
                ))
            found.append(sorted(objects, key=lambda o: -o.area))
    return found


def judge_accuracy(net: JudgeNet, scenes: list[Scene], min_iou: float = 0.5) -> dict:
    """Detection recall/precision and per-attribute accuracy of matched objects on held-out renders.

    A ground-truth toy is found when a judged object overlaps it with IoU >= `min_iou`; `position`
    is right when the judged centroid lies inside the toy's bounding box.
    """
    judged = find_objects(net, np.stack([np.asarray(scene.image) for scene in scenes]))
    truth_count = found_count = matched = 0
    correct = dict.fromkeys((*ATTRIBUTES, "position"), 0)
    for scene, objects in zip(scenes, judged, strict=True):
        truth_count += len(scene.toys)
        found_count += len(objects)
        for index, toy in enumerate(scene.toys):
            mask = scene.mask(index)
            best = max(objects, key=lambda o: (o.mask & mask).sum() / (o.mask | mask).sum(), default=None)
            if best is None or (best.mask & mask).sum() / (best.mask | mask).sum() < min_iou:
                continue
            matched += 1
            for attribute in ATTRIBUTES:
                correct[attribute] += int(best.attributes[attribute] == toy.value(attribute))
            rows, cols = np.nonzero(mask)
            x, y = best.centroid
            correct["position"] += int(cols.min() <= x <= cols.max() and rows.min() <= y <= rows.max())
    accuracy = {name: value / matched if matched else 0.0 for name, value in correct.items()}
    return {
        "scenes": len(scenes), "toys": truth_count,
        "recall": matched / truth_count if truth_count else 1.0,
        "precision": matched / found_count if found_count else 1.0,
        "accuracy": accuracy, "min_accuracy": min(accuracy.values()),
    }
