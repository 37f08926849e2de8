"""What a training run is asked to do: concepts, stages, steps, objective and the hardware flags.

Everything here is checked before a model is loaded; errors name the option they are about.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clif_serve.concepts.pack import validate_name
from clif_serve.errors import InputError
from clif_serve.training.segmentation import SegmentationConfig

STAGES = ("clif", "ti", "lora")
OBJECTIVES = ("clif", "customcontrast", "clif+customcontrast")
MIXED_PRECISION = ("no", "fp16", "bf16")
DEFAULT_STEPS = {"clif": 200, "ti": 200, "lora": 200}
# Stage 1 follows the reference (AdamW); TI and LoRA rates are the diffusers example defaults' order.
DEFAULT_LR = {"clif": 1e-3, "ti": 5e-3, "lora": 1e-4}
DEFAULT_BATCH = {"clif": 32, "ti": 4, "lora": 4}


@dataclass(frozen=True)
class ConceptSource:
    """One concept to learn: `<name>` from the images in `folder`, tokens initialised from `class_word`."""

    name: str
    folder: Path
    class_word: str


@dataclass(frozen=True)
class CommonSource:
    """Images of a common (not customised) concept, captioned `a <word>` in the augmentations."""

    word: str
    folder: Path


@dataclass(frozen=True)
class CustomContrastConfig:
    """Weights and temperatures of the CustomContrast reconstruction (docs/objectives.md)."""

    weight: float = 1.0  # weight of the customcontrast loss in `clif+customcontrast` (CLIF has weight 1)
    cross_sample_weight: float = 1.0  # CLS-level cross-sample InfoNCE
    multiview_weight: float = 0.5  # per-layer multi-view term
    temperature: float = 0.07  # cross-sample InfoNCE temperature
    layer_temperature: float = 0.1  # per-layer term temperature
    views: int = 4  # augmented views per concept image
    negative_beta: float = 1.0  # sharpness of the similarity weighting of negatives


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run (`clif-serve train` builds one from its options)."""

    concepts: tuple[ConceptSource, ...]
    out: Path
    model: str = "tiny"
    stages: tuple[str, ...] = STAGES
    steps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_STEPS))
    lr: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LR))
    batch_size: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BATCH))
    num_tokens: int = 2
    lora_rank: int = 16
    lora_alpha: float = 16.0
    image_encoders: tuple[str, ...] = ()  # empty: the embedded tiny CLIP; one: for every text encoder
    commons: tuple[CommonSource, ...] = ()  # empty: images of the class words made by the base model
    common_images: int = 2  # images per class word when the base model makes the common concepts
    logit_scale: float | None = None  # None: exp(logit_scale) of the CLIP folder, as the reference
    objective: str = "clif"
    customcontrast: CustomContrastConfig = CustomContrastConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    min_image_size: int = 64
    device: str = "cpu"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    resume: bool = False
    checkpoint_every: int = 50
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2
    # Regularisers of the diffusion stages (ti, lora) (docs/training.md#the-give-back):
    contrastive_weight: float = 0.0  # in a run with a clif stage: keep its loss, times this, in ti and lora
    anchor_weight: float = 0.0  # trust region: relative squared distance of the rows from where ti started
    stage_packs: bool = False  # also write every stage's packs to OUT/stages/<stage>/

    def validate(self) -> None:
        """Check the options that need no model; raise InputError naming the option."""
        if not self.concepts:
            raise InputError("concept", "give at least one --concept NAME=IMAGE_DIR[:CLASS_WORD]")
        seen: set[str] = set()
        for concept in self.concepts:
            validate_name(concept.name)
            if concept.name in seen:
                raise InputError("concept", f"the name {concept.name!r} is given twice; concept names must be unique")
            seen.add(concept.name)
        unknown = [stage for stage in self.stages if stage not in STAGES]
        if unknown or not self.stages or len(set(self.stages)) != len(self.stages):
            raise InputError("stages", f"{','.join(self.stages)!r}: pick distinct stages from {', '.join(STAGES)}")
        if list(self.stages) != [stage for stage in STAGES if stage in self.stages]:
            raise InputError("stages", f"stages run in the order {', '.join(STAGES)}; got {','.join(self.stages)}")
        for name, table in (("steps", self.steps), ("lr", self.lr), ("batch_size", self.batch_size)):
            for stage in self.stages:
                value = table.get(stage)
                if value is None or value < 0 or (value == 0 and name != "steps"):
                    raise InputError(name, f"stage {stage}: must be {'>= 0' if name == 'steps' else '> 0'}, got {value}")
        if self.objective not in OBJECTIVES:
            raise InputError("objective", f"{self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise InputError("mixed_precision", f"{self.mixed_precision!r} is not one of {', '.join(MIXED_PRECISION)}")
        if self.num_tokens < 1 or self.lora_rank < 1:
            raise InputError("num_tokens" if self.num_tokens < 1 else "rank", "must be >= 1")
        for name in ("contrastive_weight", "anchor_weight"):
            if getattr(self, name) < 0:
                raise InputError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.checkpoint_every < 1:
            raise InputError("checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        self.segmentation.validate()

    @property
    def keeps_stage_one_loss(self) -> bool:
        """Whether the ti and lora stages add the stage-1 loss: a clif stage runs and the weight is > 0."""
        return self.contrastive_weight > 0 and "clif" in self.stages

    def resume_key(self, fingerprint: str) -> str:
        """Hash of every setting a checkpoint depends on (steps may grow between runs; the rest may not)."""
        settings = asdict(self)
        for volatile in ("steps", "out", "resume", "device", "checkpoint_every", "stage_packs"):
            settings.pop(volatile)
        settings["fingerprint"] = fingerprint
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_concept(text: str, default_class: str | None = None) -> ConceptSource:
    """Parse `NAME=IMAGE_DIR[:CLASS_WORD]` (the class word may also come from `default_class`)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise InputError("concept", f"{text!r} is not NAME=IMAGE_DIR[:CLASS_WORD]")
    folder, class_word = rest, default_class
    head, colon, tail = rest.rpartition(":")
    if colon and head and tail and "/" not in tail and "\\" not in tail:
        folder, class_word = head, tail
    if not class_word:
        raise InputError(f"concept {name}", "has no class word; write NAME=IMAGE_DIR:CLASS_WORD or give --class")
    return ConceptSource(name=name, folder=Path(folder).expanduser(), class_word=class_word)


def parse_common(text: str) -> CommonSource:
    """Parse `WORD=IMAGE_DIR` for a common concept."""
    word, sep, folder = text.partition("=")
    if not sep or not word.strip() or not folder:
        raise InputError("common", f"{text!r} is not WORD=IMAGE_DIR")
    return CommonSource(word=word.strip(), folder=Path(folder).expanduser())


def parse_per_stage(text: str, kind: type, option: str) -> dict:
    """`200` (every stage) or `clif=300,ti=100` (named stages; the others keep their default)."""
    values = {}
    try:
        if "=" not in text:
            return {stage: kind(text) for stage in STAGES}
        for item in text.split(","):
            stage, _, value = item.partition("=")
            if stage.strip() not in STAGES:
                raise InputError(option, f"unknown stage {stage.strip()!r} (stages: {', '.join(STAGES)})")
            values[stage.strip()] = kind(value)
    except ValueError as exc:
        raise InputError(option, f"{text!r}: {exc}") from exc
    return values
