"""`train(config)`: check every input, then run the requested stages and write the concept packs.

Order: validate options -> load the base model -> check class words -> read and over-segment the
concept images, read or draw the common concepts, load the image tower(s) -> (nothing has trained
yet; every input error surfaces here) -> stage 1 (clif | customcontrast | both), stage 2 (ti),
stage 3 (lora + embeddings) -> one pack per concept in OUT (a pack set sharing one LoRA when the
lora stage ran), `train_log.jsonl` (one line per step) and `train_summary.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clif_serve.concepts.create import class_word_ids, new_pack
from clif_serve.concepts.pack import ConceptPack
from clif_serve.concepts.store import ConceptStore
from clif_serve.errors import InputError
from clif_serve.models.loading import BaseModel, load_base_model
from clif_serve.training.checkpoint import Checkpoint, SavedState
from clif_serve.training.commons import generate_commons, load_commons
from clif_serve.training.config import STAGES, TrainConfig
from clif_serve.training.contrastive import ContrastiveBatchData, clif_loss_fn, match_towers
from clif_serve.training.customcontrast import ViewData, customcontrast_loss_fn
from clif_serve.training.data import ConceptImages, load_concept
from clif_serve.training.diffusion import add_lora, diffusion_loss_fn, latent_distribution, lora_weights
from clif_serve.training.image_tower import ImageTower, load_image_tower
from clif_serve.training.loop import LoopSettings, Stage, run_stage
from clif_serve.training.regularisers import regularised
from clif_serve.training.samples import GLOBAL_TEMPLATES, CommonImages, build_samples
from clif_serve.training.tables import ConceptTables, TextSide, encode_captions
from clif_serve.training.views import build_views

LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
STAGE_PACKS = "stages"


@dataclass
class Prepared:
    """Everything checked and loaded before the first training step."""

    base: BaseModel
    packs: list[ConceptPack]
    concepts: list[ConceptImages]
    commons: list[CommonImages]
    towers: list[ImageTower]


@dataclass
class TrainResult:
    """What a run wrote and how long each stage took (seconds, this call only)."""

    packs: list[Path]
    log_file: Path
    seconds: dict[str, float] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    stage_packs: dict[str, list[Path]] = field(default_factory=dict)  # with `stage_packs`: OUT/stages/<stage>/


def prepare(config: TrainConfig) -> Prepared:
    """Validate every input and load what training needs; raise InputError before any training."""
    config.validate()
    if config.mixed_precision == "fp16" and torch.device(config.device).type != "cuda":
        raise InputError("mixed_precision", "fp16 needs a CUDA device; use bf16 or no on CPU")
    base = load_base_model(config.model, device=config.device)
    for concept in config.concepts:
        class_word_ids(base, concept.class_word, field=f"concept {concept.name} class word")
    packs = [new_pack(base, c.name, c.class_word, config.num_tokens) for c in config.concepts]
    segmentation = config.segmentation
    concepts = [load_concept(c.name, c.folder, config.min_image_size, segmentation) for c in config.concepts]
    contrastive = "clif" in config.stages  # stage 1, and the kept stage-1 loss, need the image towers
    towers: list[ImageTower] = []
    if contrastive:
        paths = config.image_encoders or (None,)
        towers = match_towers(base, [load_image_tower(path, device=config.device) for path in paths])
    commons: list[CommonImages] = load_commons(config.commons, config.min_image_size)
    if contrastive and not commons:  # drawn last: every cheaper check has passed by now
        words = [c.class_word for c in config.concepts]
        commons = generate_commons(base, words, config.common_images, config.seed)
    return Prepared(base, packs, concepts, commons, towers)


def _cast_frozen(base: BaseModel, mixed_precision: str) -> None:
    """Frozen text encoders and UNet in half precision for mixed precision (the VAE stays float32)."""
    if mixed_precision == "no":
        return
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    for module in (*base.text_encoders, base.unet):
        module.to(dtype=dtype)


def _feature_cache(towers: list[ImageTower], images) -> list[torch.Tensor]:
    """Image features of `images` under each text encoder's tower (a shared tower embeds once)."""
    cache: dict[int, torch.Tensor] = {}
    for tower in towers:
        if id(tower) not in cache:
            cache[id(tower)] = tower.embed(images)
    return [cache[id(tower)] for tower in towers]


def stage_one_loss(config: TrainConfig, prep: Prepared, text_side: TextSide):
    """The stage-1 loss for the configured objective (`clif`, `customcontrast` or their weighted sum)."""
    batch = config.batch_size["clif"]
    parts = []
    if config.objective in ("clif", "clif+customcontrast"):
        samples = build_samples(prep.concepts, prep.commons, config.seed)
        data = ContrastiveBatchData(
            encode_captions(prep.base, [s.caption for s in samples], prep.packs),
            [s.group for s in samples],
            _feature_cache(prep.towers, [s.image for s in samples]),
        )
        parts.append((1.0, clif_loss_fn(data, text_side, prep.towers, batch, config.logit_scale)))
    if config.objective in ("customcontrast", "clif+customcontrast"):
        cc = config.customcontrast
        views, labels, captions = build_views(prep.concepts, prep.commons, cc.views, config.seed)
        data = ViewData(
            _feature_cache(prep.towers, views), torch.tensor(labels), encode_captions(prep.base, captions, prep.packs)
        )
        weight = cc.weight if config.objective == "clif+customcontrast" else 1.0
        parts.append((weight, customcontrast_loss_fn(data, text_side, prep.towers, batch, cc)))

    def loss_fn(generator: torch.Generator) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        total = 0.0
        for weight, part in parts:
            result = part(generator)
            total = total + weight * result.pop("loss")
            terms.update(result)
        return {"loss": total, **terms}

    return loss_fn


def diffusion_stage_loss(config: TrainConfig, prep: Prepared, text_side: TextSide, stage: str):
    """The ε-MSE loss of stages 2/3 over every (concept image, caption template) pair."""
    images = [image for concept in prep.concepts for image in concept.images]
    captions, image_of_caption = [], []
    start = 0
    for concept in prep.concepts:
        for offset in range(len(concept.images)):
            for template in GLOBAL_TEMPLATES:
                captions.append(template.format(concept.trigger))
                image_of_caption.append(start + offset)
        start += len(concept.images)
    encoded = encode_captions(prep.base, captions, prep.packs)
    latents = latent_distribution(prep.base, images)
    return diffusion_loss_fn(
        prep.base, text_side, encoded, torch.tensor(image_of_caption), latents, config.batch_size[stage]
    )


def _restore_tables(tables: ConceptTables, saved: SavedState | None) -> None:
    if saved is None:
        return
    with torch.no_grad():
        for index, parameter in enumerate(tables.tables):
            parameter.copy_(saved.tensors[f"tables.{index}"])


def _anchors(tables: ConceptTables, saved: SavedState | None) -> dict[str, torch.Tensor]:
    """The trust region's centre: the rows as the first diffusion stage begins (restored on resume)."""
    names = [f"anchor.{index}" for index in range(len(tables.tables))]
    if saved is not None and all(name in saved.tensors for name in names):
        return {name: saved.tensors[name].to(tables.tables[0].device) for name in names}
    return {name: parameter.detach().clone() for name, parameter in zip(names, tables.tables, strict=True)}


def _write_packs(base: BaseModel, tables: ConceptTables, lora, folder: Path) -> list[Path]:
    """Validate and save every concept's pack through `ConceptStore` (a served store sees them at once)."""
    store = ConceptStore(folder)
    paths = []
    for pack in tables.packs(lora):
        pack.validate_for(base.spec)
        paths.append(store.save(pack))
    return paths


def train(config: TrainConfig, prepared: Prepared | None = None) -> TrainResult:
    """Run the configured stages and write one pack per concept into `config.out`.

    `prepared` (from `prepare(config)`) lets a caller hold the models it trains with.
    """
    prep = prepared if prepared is not None else prepare(config)
    base = prep.base
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(out / "checkpoint", config.resume_key(base.spec.fingerprint))
    log_file = out / LOG_FILE
    saved = checkpoint.load() if config.resume else None
    if not config.resume:
        checkpoint.clear()
        log_file.unlink(missing_ok=True)
    _cast_frozen(base, config.mixed_precision)
    if config.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
    device = torch.device(config.device)
    tables = ConceptTables(prep.packs, base.spec.text_encoder_names).to(device)
    _restore_tables(tables, saved)
    text_side = TextSide(base, tables, config.gradient_checkpointing)
    settings = LoopSettings(
        config.seed, device, config.mixed_precision, config.max_grad_norm, config.weight_decay,
        config.checkpoint_every, log_file,
    )
    trainables: dict[str, torch.Tensor] = {f"tables.{i}": p for i, p in enumerate(tables.tables)}
    anchors: dict[str, torch.Tensor] = {}
    result = TrainResult([], log_file)
    reached = STAGES.index(saved.stage) if saved is not None else 0
    for stage_name in config.stages:
        index = STAGES.index(stage_name)
        if stage_name == "lora":
            lora_params = add_lora(base, config.lora_rank, config.lora_alpha, config.seed)
            for parameter in lora_params.values():
                parameter.data = parameter.data.float()
            trainables.update(lora_params)
        if stage_name != "clif" and config.anchor_weight > 0 and not anchors:
            anchors = _anchors(tables, saved if index <= reached else None)
        if index < reached:
            continue
        started = time.perf_counter()
        if stage_name == "clif":
            loss_fn = stage_one_loss(config, prep, text_side)
        else:
            kept = stage_one_loss(config, prep, text_side) if config.keeps_stage_one_loss else None
            loss_fn = regularised(
                diffusion_stage_loss(config, prep, text_side, stage_name),
                (config.contrastive_weight, kept) if kept is not None else None,
                (config.anchor_weight, tables, list(anchors.values())) if anchors else None,
            )
        stage = Stage(stage_name, index, config.steps[stage_name], config.lr[stage_name], dict(trainables), loss_fn)
        result.records += run_stage(stage, settings, checkpoint, saved, {**trainables, **anchors})
        result.seconds[stage_name] = round(time.perf_counter() - started, 3)
        if config.stage_packs:
            lora = lora_weights(base, config.lora_rank, config.lora_alpha) if stage_name == "lora" else None
            result.stage_packs[stage_name] = _write_packs(base, tables, lora, out / STAGE_PACKS / stage_name)
    lora = lora_weights(base, config.lora_rank, config.lora_alpha) if "lora" in config.stages else None
    result.packs = _write_packs(base, tables, lora, out)
    summary = {
        "model": config.model, "stages": list(config.stages), "objective": config.objective,
        "steps": {s: config.steps[s] for s in config.stages}, "seconds": result.seconds,
        "packs": [p.name for p in result.packs], "lora_set": lora.set_id if lora is not None else None,
        "contrastive_weight": config.contrastive_weight if config.keeps_stage_one_loss else 0.0,
        "anchor_weight": config.anchor_weight,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return result
