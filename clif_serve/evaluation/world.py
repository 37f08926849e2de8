"""The synthetic world: two-part toys drawn with PIL, with pixel-exact ground truth.

A toy has a body (shape, colour, texture) and a head (shape, colour) sitting on top of it, e.g.
"a red striped circle with a blue square". A scene holds one toy (anywhere on the canvas) or two
toys side by side ("X and Y": X in the left half, Y in the right half), on a light tinted
background. Every render comes with its ground truth: which pixels belong to which toy and part,
so the judge can be trained on it and the confusion metric can be checked against it.

Textures are coarse on purpose (stripes and dots with an 8-pixel period on a grid fixed to the
canvas): the world model draws 64x64 images through a 4x VAE, and an 8-pixel period is two of its
latent cells, so a texture lines up with them. A texture the VAE could not represent (a 6-pixel
period aliased into stripes) would make the distinctive attribute of a look-alike pair unlearnable
for every method alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from clif_serve.training.segmentation import region_crop

SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 45, 40), "green": (40, 155, 60), "blue": (40, 80, 215),
    "yellow": (235, 200, 30), "purple": (140, 55, 175), "black": (35, 35, 35),
}
SHAPES = ("circle", "square", "triangle", "star")  # each a single token of the tiny vocabulary (class words)
TEXTURES = ("plain", "striped", "dotted")
PARTS = ("background", "body", "head")
ATTRIBUTES = ("body_shape", "body_colour", "texture", "head_shape", "head_colour")
# The attributes that tell two look-alike concepts apart (look_alike_pair keeps the others equal).
DISTINCTIVE = ("texture", "head_colour")
PERIOD = 8  # texture period in pixels: two latent cells of the 4x VAE, so a texture lines up with them


@dataclass(frozen=True)
class Toy:
    """A two-part object of the world."""

    body_shape: str
    body_colour: str
    texture: str
    head_shape: str
    head_colour: str

    def body_phrase(self) -> str:
        texture = "" if self.texture == "plain" else f"{self.texture} "
        return f"{self.body_colour} {texture}{self.body_shape}"

    def caption(self) -> str:
        """"a red striped circle with a blue square" ("plain" is not said)."""
        return f"a {self.body_phrase()} with a {self.head_colour} {self.head_shape}"

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


@dataclass
class Scene:
    """A render and its ground truth: `instance[y, x]` (0 background, k for toy k-1) and `part[y, x]`."""

    image: Image.Image
    toys: list[Toy]
    instance: np.ndarray
    part: np.ndarray

    def mask(self, index: int, part: str | None = None) -> np.ndarray:
        """Pixels of toy `index` (optionally one part: "body" or "head")."""
        inside = self.instance == index + 1
        return inside if part is None else inside & (self.part == PARTS.index(part))


def random_toy(rng: np.random.Generator) -> Toy:
    colours = list(COLOURS)
    return Toy(
        SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))], TEXTURES[rng.integers(len(TEXTURES))],
        SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))],
    )


def look_alike_pair(rng: np.random.Generator) -> tuple[Toy, Toy]:
    """Two toys with the same body shape, body colour and head shape; texture and head colour differ.

    The head colours differ from each other and from the shared body colour, so a head never
    disappears into its body.
    """
    first = random_toy(rng)
    while first.head_colour == first.body_colour:
        first = replace(first, head_colour=list(COLOURS)[rng.integers(len(COLOURS))])
    textures = [t for t in TEXTURES if t != first.texture]
    colours = [c for c in COLOURS if c not in (first.head_colour, first.body_colour)]
    second = replace(first, texture=textures[rng.integers(len(textures))], head_colour=colours[rng.integers(len(colours))])
    return first, second


def shape_mask(shape: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean `[SIZE, SIZE]` mask of a shape filling `box` (left, top, right, bottom)."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask)
    left, top, right, bottom = box
    middle_x, middle_y = (left + right) / 2, (top + bottom) / 2
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    elif shape == "triangle":
        draw.polygon([(middle_x, top), (right, bottom), (left, bottom)], fill=255)
    elif shape == "star":
        outer, inner = (right - left) / 2, (right - left) / 4.5
        points = [
            (middle_x + radius * np.sin(k * np.pi / 5), middle_y - radius * np.cos(k * np.pi / 5))
            for k in range(10)
            for radius in [(outer, inner)[k % 2]]
        ]
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(mask) > 0


@functools.cache
def texture_pattern(texture: str) -> np.ndarray:
    """Where a texture shows its second shade, `[SIZE, SIZE]` bool (a fixed grid of the canvas)."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    if texture == "striped":
        return (cols % PERIOD) < PERIOD // 2
    if texture == "dotted":
        return ((rows % PERIOD) < PERIOD // 2) & ((cols % PERIOD) < PERIOD // 2)
    return np.zeros((SIZE, SIZE), dtype=bool)


def second_shade(colour: str) -> np.ndarray:
    """The texture's other shade: darker for light colours, lighter for dark ones."""
    base = np.array(COLOURS[colour], dtype=np.float32)
    return base * 0.45 if base.mean() > 80 else base + (255 - base) * 0.55


def paint(pixels: np.ndarray, mask: np.ndarray, colour: str, texture: str) -> None:
    pattern = texture_pattern(texture)[..., None]
    shade = np.where(pattern, second_shade(colour), np.array(COLOURS[colour], dtype=np.float32))
    pixels[mask] = shade[mask]


def _draw(scene_toys: list[Toy], boxes: list[tuple[int, int, int]], rng: np.random.Generator) -> Scene:
    """Paint toys given (left, top, body size) boxes on a tinted background."""
    tint = rng.integers(185, 236, 3)
    pixels = np.broadcast_to(tint, (SIZE, SIZE, 3)).astype(np.float32).copy()
    instance = np.zeros((SIZE, SIZE), dtype=np.int64)
    part = np.zeros((SIZE, SIZE), dtype=np.int64)
    for index, (toy, (left, top, body_size)) in enumerate(zip(scene_toys, boxes, strict=True)):
        head_size = max(8, body_size // 2)
        head_left = left + (body_size - head_size) // 2 + int(rng.integers(-2, 3))
        body = shape_mask(toy.body_shape, (left, top, left + body_size - 1, top + body_size - 1))
        below = body[:, head_left + head_size // 4 : head_left + head_size - head_size // 4].any(axis=1)
        head_top = int(np.argmax(below)) - head_size + 3  # overlap the body's top under the head by 3 px
        head = shape_mask(toy.head_shape, (head_left, head_top, head_left + head_size - 1, head_top + head_size - 1))
        paint(pixels, body & ~head, toy.body_colour, toy.texture)
        paint(pixels, head, toy.head_colour, "plain")
        instance[body | head] = index + 1
        part[body & ~head] = PARTS.index("body")
        part[head] = PARTS.index("head")
    return Scene(Image.fromarray(pixels.round().astype(np.uint8)), list(scene_toys), instance, part)


def render_scattered(toys: list[Toy], rng: np.random.Generator, sizes: tuple[int, int] = (14, 35)) -> Scene:
    """Toys of random sizes at random places that do not overlap (the judge's training layouts).

    A toy that finds no free place after a few tries is left out (`Scene.toys` lists what was drawn).
    """
    taken = np.zeros((SIZE, SIZE), dtype=bool)
    placed, boxes = [], []
    for toy in toys:
        for _ in range(20):
            body = int(rng.integers(*sizes))
            head = max(8, body // 2)
            left, top = int(rng.integers(1, SIZE - body)), int(rng.integers(head - 1, SIZE - body))
            footprint = np.zeros_like(taken)
            footprint[max(0, top - head - 1) : top + body + 1, max(0, left - 3) : left + body + 3] = True
            if not (footprint & taken).any():
                taken |= footprint
                placed.append(toy)
                boxes.append((left, top, body))
                break
    return _draw(placed, boxes, rng)


def render_single(toy: Toy, rng: np.random.Generator) -> Scene:
    """One toy, body 26-34 px, anywhere it fits."""
    body = int(rng.integers(26, 35))
    head = max(8, body // 2)
    left = int(rng.integers(2, SIZE - body - 1))
    top = int(rng.integers(head - 1, SIZE - body - 1))
    return _draw([toy], [(left, top, body)], rng)


def render_pair(left_toy: Toy, right_toy: Toy, rng: np.random.Generator) -> Scene:
    """Two toys side by side: the first in the left half, the second in the right half (never touching)."""
    boxes = []
    for slot in range(2):
        body = int(rng.integers(18, 25))
        head = max(8, body // 2)
        start = slot * SIZE // 2 + 2
        left = int(rng.integers(start, start + SIZE // 2 - 4 - body + 1))
        top = int(rng.integers(head - 1, SIZE - body - 1))
        boxes.append((left, top, body))
    return _draw([left_toy, right_toy], boxes, rng)


def pair_caption(first: str, second: str, rng: np.random.Generator) -> str:
    """How the world says "first on the left, second on the right"."""
    if rng.random() < 0.25:
        return f"{first} on the left and {second} on the right"
    return f"{first} and {second}"


TEMPLATES = ("{}", "a photo of {}", "a rendering of {}", "a close-up photo of {}", "a good photo of {}")
KEEP = 0.6  # chance that a partial caption says each optional attribute


def partial_caption(toy: Toy, rng: np.random.Generator) -> str:
    """A caption that leaves some attributes out, as real captions do: "a striped circle", "a circle
    with a square", "a red circle with a blue square". The body shape (the class word a personal
    concept starts from) is always said; body colour, texture and the head are each said with
    chance `KEEP`, the head's colour again with chance `KEEP`.

    Without such captions the world model only ever saw complete descriptions, so a prompt that
    names a toy by its class word alone ("a photo of <ann> and <bob>" starting from "circle") was
    outside what it learned to draw.
    """
    words = [toy.body_colour] if rng.random() < KEEP else []
    if toy.texture != "plain" and rng.random() < KEEP:
        words.append(toy.texture)
    phrase = " ".join(["a", *words, toy.body_shape])
    if rng.random() < KEEP:
        head = [toy.head_colour] if rng.random() < KEEP else []
        phrase += " with a " + " ".join([*head, toy.head_shape])
    return phrase


def toy_caption(toy: Toy, rng: np.random.Generator, partial_share: float) -> str:
    """The complete caption, or with chance `partial_share` a partial one."""
    return partial_caption(toy, rng) if partial_share and rng.random() < partial_share else toy.caption()


def captioned_scene(rng: np.random.Generator, pair_share: float = 0.5, partial_share: float = 0.0) -> tuple[Scene, str]:
    """A random scene (single toy or pair) and its caption in one of the world's templates
    (each toy's phrase partial with chance `partial_share`)."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    if rng.random() < pair_share:
        first, second = random_toy(rng), random_toy(rng)
        phrases = (toy_caption(first, rng, partial_share), toy_caption(second, rng, partial_share))
        return render_pair(first, second, rng), template.format(pair_caption(*phrases, rng))
    toy = random_toy(rng)
    return render_single(toy, rng), template.format(toy_caption(toy, rng, partial_share))


def region_image(scene: Scene, index: int, part: str) -> Image.Image:
    """The region crop of one part of one toy, as stage 1 crops over-segmented regions."""
    return region_crop(scene.image, scene.mask(index, part))


def part_caption(toy: Toy, part: str) -> str:
    """"a blue square" for a head, "a red striped circle" for a body."""
    return f"a {toy.head_colour} {toy.head_shape}" if part == "head" else f"a {toy.body_phrase()}"
