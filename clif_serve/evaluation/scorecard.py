"""`clif-serve eval`: CLIP-T, CLIP-I, DINO and region-level confusion of concept packs on a real checkpoint.

Images are generated in process (PyTorch executor, `--model` + `--concept PACK`) or by a running
server (`--url`; its concept store provides the concepts). Scores, with the user's own local
models (nothing is downloaded):

* CLIP-T: cosine between each image and its prompt, every trigger replaced by "a <class word>"
  (Custom Diffusion drops the modifier token the same way);
* CLIP-I / DINO: per image and per concept of its prompt, the mean cosine to that concept's own
  photos (`--concept-images NAME=DIR`), with the CLIP image tower / DINOv2;
* region confusion (`clif_serve.evaluation.retrieval`): regions of the concepts' photos
  (over-segmentation, SLIC by default) assigned to the nearest "a photo of <c>" in the CLIP space,
  the caption encoded by the base model's text encoder with the packs. It needs the packs and base
  in process and a CLIP whose text projection fits the base text encoder (SD1.5's text encoder is
  CLIP ViT-L/14's); otherwise it is reported as skipped, with the reason.

Whole images are compared with the concepts' photos; per-object crops (MuDI's Detect-and-Compare)
need a detector for real photos, which this command does not bring.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clif_serve.bench.environment import describe_environment
from clif_serve.concepts.pack import read_pack
from clif_serve.concepts.prompt import TRIGGER_IN_TEXT
from clif_serve.errors import InputError
from clif_serve.evaluation.retrieval import concept_text_features, retrieval_confusion
from clif_serve.evaluation.scores import ClipScorer, DinoScorer, mean_similarity
from clif_serve.runtime.images import save_pngs, to_uint8
from clif_serve.runtime.request import GenerationRequest
from clif_serve.training.data import load_concept, load_folder
from clif_serve.training.segmentation import SegmentationConfig


@dataclass(frozen=True)
class ConceptInfo:
    name: str
    trigger: str
    class_word: str


@dataclass(frozen=True)
class EvalConfig:
    """What `clif-serve eval` is asked to do."""

    out: Path
    model: str = "tiny"
    packs: tuple[Path, ...] = ()
    references: dict[str, Path] = field(default_factory=dict)  # concept name -> folder of its own photos
    prompts: tuple[str, ...] = ()  # empty: "a photo of <c>" per concept and every ordered pair "<a> and <b>"
    url: str | None = None
    clip: Path | None = None
    dino: Path | None = None
    seeds: int = 2
    images: int = 4  # per prompt and seed (one request)
    steps: int = 20
    guidance_scale: float = 7.5
    segmentation: SegmentationConfig = SegmentationConfig()
    min_image_size: int = 64
    save_images: bool = False

    def validate(self) -> None:
        if self.clip is None and self.dino is None:
            raise InputError("clip", "give --clip DIR and/or --dino DIR (local model folders) to score with")
        if self.url is None and not self.packs:
            raise InputError("concept", "give --concept PACK (in process) or --url HOST:PORT (a server's concepts)")
        for name, value in (("seeds", self.seeds), ("images", self.images)):
            if value < 1:
                raise InputError(name, f"must be >= 1, got {value}")


def concepts_of(config: EvalConfig, packs) -> dict[str, ConceptInfo]:
    """Concepts by trigger: from the packs, or from the server's store with --url."""
    if config.url is not None and not packs:
        from clif_serve.serving.client import ClifClient

        with ClifClient(config.url) as client:
            listed = client.list_concepts()
        return {c["trigger"]: ConceptInfo(c["name"], c["trigger"], c["class_word"]) for c in listed}
    return {p.trigger: ConceptInfo(p.name, p.trigger, p.class_word) for p in packs}


def default_prompts(concepts: Sequence[ConceptInfo]) -> list[str]:
    singles = [f"a photo of {c.trigger}" for c in concepts]
    pairs = [f"a photo of {a.trigger} and {b.trigger}" for a, b in itertools.permutations(concepts, 2)]
    return singles + pairs


def plain_prompt(prompt: str, concepts: dict[str, ConceptInfo]) -> str:
    """The prompt with each trigger replaced by "a <class word>" (for CLIP-T)."""
    return TRIGGER_IN_TEXT.sub(lambda m: f"a {concepts[m.group(0)].class_word}" if m.group(0) in concepts else m.group(0), prompt)


def generate_all(config: EvalConfig, packs, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """uint8 images `[seeds * images, H, W, 3]` per prompt, in process or from the server."""
    requests = {
        prompt: [GenerationRequest(prompt, steps=config.steps, guidance_scale=config.guidance_scale, seed=seed,
                                   num_images=config.images) for seed in range(config.seeds)]
        for prompt in prompts
    }
    if config.url is not None:
        from clif_serve.serving.client import ClifClient

        with ClifClient(config.url) as client:
            return {p: np.concatenate([client.generate(r) for r in rs]) for p, rs in requests.items()}
    from clif_serve.runtime.factory import torch_pipeline

    pipeline = torch_pipeline(config.model, packs)
    return {p: np.concatenate([to_uint8(pipeline.generate(r)) for r in rs]) for p, rs in requests.items()}


def region_score(config: EvalConfig, packs, clip: ClipScorer | None) -> dict:
    """Region->concept confusion over the concepts' photos, or {"skipped": reason}."""
    with_photos = [p for p in packs if p.name in config.references]
    if clip is None or len(with_photos) < 2:
        return {"skipped": "needs --clip, --concept packs in process and photos of at least two of them"}
    from clif_serve.models.loading import load_base_model

    base = load_base_model(config.model)
    regions, labels = [], []
    for label, pack in enumerate(with_photos):
        concept = load_concept(pack.name, config.references[pack.name], config.min_image_size, config.segmentation)
        crops = [crop for image_crops in concept.regions for crop in image_crops]
        regions += crops
        labels += [label] * len(crops)
    try:
        text = concept_text_features(base, clip.tower, with_photos)
    except InputError as exc:
        return {"skipped": str(exc)}
    return {"concepts": [p.name for p in with_photos], **retrieval_confusion(clip.tower.embed(regions), labels, text)}


def evaluate(config: EvalConfig) -> dict:
    """Generate, score and return the report (written to `config.out` as eval.json and eval.md)."""
    config.validate()
    started = time.perf_counter()
    packs = [read_pack(path) for path in config.packs]
    concepts = concepts_of(config, packs)
    by_name = {c.name: c for c in concepts.values()}
    unknown = sorted(set(config.references) - set(by_name))
    if unknown:
        raise InputError("concept_images", f"no concept named {', '.join(unknown)}; known: {', '.join(sorted(by_name))}")
    clip = ClipScorer(config.clip) if config.clip is not None else None
    dino = DinoScorer(config.dino) if config.dino is not None else None
    references = {name: load_folder(folder, f"concept_images {name}", 1)[1] for name, folder in config.references.items()}
    prompts = list(config.prompts) or default_prompts(list(concepts.values()))
    generated = generate_all(config, packs, prompts)
    reference_features = {
        scorer: {name: model.images(images) for name, images in references.items()}
        for scorer, model in (("clip_i", clip), ("dino", dino)) if model is not None
    }
    rows = []
    for index, prompt in enumerate(prompts):
        images = [Image.fromarray(image) for image in generated[prompt]]
        row: dict = {"prompt": prompt, "images": len(images)}
        features = {scorer: model.images(images) for scorer, model in (("clip_i", clip), ("dino", dino)) if model is not None}
        if clip is not None:
            row["clip_t"] = float((features["clip_i"] @ clip.texts([plain_prompt(prompt, concepts)]).T).mean())
        names = [concepts[t].name for t in TRIGGER_IN_TEXT.findall(prompt) if t in concepts]
        for scorer, own in features.items():
            row[scorer] = {name: float(mean_similarity(own, reference_features[scorer][name]).mean())
                           for name in dict.fromkeys(names) if name in references}
        if config.save_images:
            save_pngs(generated[prompt], config.out / "images" / f"prompt{index}.png")
        rows.append(row)
    report = {
        "settings": {"model": config.model, "url": config.url, "packs": [str(p) for p in config.packs],
                     "clip": str(config.clip) if config.clip else None, "dino": str(config.dino) if config.dino else None,
                     "seeds": config.seeds, "images_per_seed": config.images, "steps": config.steps,
                     "guidance_scale": config.guidance_scale},
        "prompts": rows, "summary": summarise(rows),
        "region_confusion": region_score(config, packs, clip) if packs else {"skipped": "no packs in process"},
        "environment": describe_environment(), "seconds": round(time.perf_counter() - started, 1),
    }
    write_report(report, config.out)
    return report


def summarise(rows: Sequence[dict]) -> dict:
    """Means over prompts (CLIP-T) and over (prompt, concept) pairs (CLIP-I, DINO), single vs multi-concept."""
    summary = {}
    for kind, selected in (("all", rows), ("single", [r for r in rows if _count(r) == 1]),
                           ("multi", [r for r in rows if _count(r) > 1])):
        entry = {}
        if selected and "clip_t" in selected[0]:
            entry["clip_t"] = float(np.mean([r["clip_t"] for r in selected]))
        for scorer in ("clip_i", "dino"):
            values = [v for r in selected for v in r.get(scorer, {}).values()]
            if values:
                entry[scorer] = float(np.mean(values))
        if entry:
            summary[kind] = entry
    return summary


def _count(row: dict) -> int:
    return len(TRIGGER_IN_TEXT.findall(row["prompt"]))


def markdown(report: dict) -> str:
    """The report as markdown."""
    settings = report["settings"]
    lines = [
        f"# clif-serve eval ({settings['url'] or settings['model']})", "",
        f"{settings['seeds']} seeds x {settings['images_per_seed']} images per prompt, {settings['steps']} steps, "
        f"guidance {settings['guidance_scale']}; CLIP {settings['clip']}, DINO {settings['dino']}.", "",
        "| prompt | images | CLIP-T | CLIP-I | DINO |", "| --- | --- | --- | --- | --- |",
    ]
    for row in report["prompts"]:
        cells = [f"{row['clip_t']:.3f}" if "clip_t" in row else "-"]
        for scorer in ("clip_i", "dino"):
            values = row.get(scorer, {})
            cells.append(", ".join(f"{name} {value:.3f}" for name, value in values.items()) or "-")
        lines.append(f"| {row['prompt']} | {row['images']} | {' | '.join(cells)} |")
    lines += ["", "| prompts | CLIP-T | CLIP-I | DINO |", "| --- | --- | --- | --- |"]
    for kind, entry in report["summary"].items():
        cells = [f"{entry[k]:.3f}" if k in entry else "-" for k in ("clip_t", "clip_i", "dino")]
        lines.append(f"| {kind} | {' | '.join(cells)} |")
    region = report["region_confusion"]
    if "skipped" in region:
        lines += ["", f"Region confusion: skipped ({region['skipped']})."]
    else:
        lines += ["", f"Region confusion ({', '.join(region['concepts'])}; {region['regions']} regions; lower is better, "
                  f"chance {1 - 1 / len(region['concepts']):.2f}): calibrated {region['calibrated']:.3f}, raw {region['raw']:.3f}."]
    lines += ["", f"Took {report['seconds']} s on {report['environment']['cpu']}.", ""]
    return "\n".join(lines)


def write_report(report: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(report, indent=2))
    (folder / "eval.md").write_text(markdown(report))
    return [folder / "eval.json", folder / "eval.md"]

