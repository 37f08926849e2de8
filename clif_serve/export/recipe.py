"""Export recipes: TOML files shipped in `clif_serve/export/recipes/` (the checkout's top-level `export/`
links there), or any TOML file; read with `tomllib` (`tomli` on Python 3.10).

A recipe fixes what an export supports: the batch range every stage accepts, the image sizes, the
concept-table rows, the LoRA ranks of `unet_lora`, its region slots (`regions`: how many regions a
request may carry, 0 for none; see docs/regions.md), the UNet variants to emit, the parity tolerance
and the TensorRT build (precision, workspace, optimisation profiles, whether the UNet engine is
refittable) and, with the UNet variant `bank`, the LoRA bank of `unet_bank` (`lora_bank = { sets,
rank }`: how many LoRA sets are resident at once, and the rank every set is zero-padded to; the
bank holds `sets + 1` slots, slot 0 being no LoRA). Without `parity_tolerance` each stage's
tolerance is derived from float32 rounding at its size (`clif_serve.export.parity`). Ranges are
`{min, opt, max}`; `opt` is what TensorRT tunes for. `batch` counts
samples per network call: with classifier-free guidance the UNet sees two per image.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (e.g. NVIDIA's tritonserver container): the same parser from PyPI
    import tomli as tomllib

from clif_serve.contract.deployment import Deployment
from clif_serve.contract.ranges import Range
from clif_serve.contract.stages import model_stages
from clif_serve.errors import InputError
from clif_serve.models.spec import ModelSpec

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
UNET_VARIANTS = ("plain", "lora", "bank")
ONNX_PRECISIONS = ("fp32",)
TENSORRT_PRECISIONS = ("fp16", "fp32")
# Region slots of unet_lora a recipe may ask for (each costs every call of that stage a little).
MAX_REGION_SLOTS = 16
# The embedded models and their recipes; a diffusers folder gets the recipe of its layout.
DEFAULT_RECIPES = {"tiny": "tiny", "tiny-xl": "tiny-xl", "sd15": "sd15-512", "sdxl": "sdxl-1024"}


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimisation profile: ranges of batch and image height/width (pixels)."""

    batch: Range
    height: Range
    width: Range


@dataclass(frozen=True)
class TensorRTSettings:
    """How `--tensorrt` builds engines."""

    precision: str
    workspace_gib: float
    profiles: tuple[Profile, ...]
    # Build the UNet engine refittable (LoRA switches by refit) and record the ONNX-initializer map
    # a refit needs. Off by default: an ordinary export hashes no weights.
    refit: bool = False


@dataclass(frozen=True)
class BankSettings:
    """The LoRA bank of `unet_bank`: `sets` LoRA sets resident at once, each zero-padded to `rank`."""

    sets: int = 8
    rank: int = 16

    @property
    def slots(self) -> int:
        """Rows of the bank: one per set, and slot 0 (no LoRA)."""
        return self.sets + 1


@dataclass(frozen=True)
class Recipe:
    """Everything an export needs besides the model."""

    name: str
    opset: int
    precision: str
    unet_variants: tuple[str, ...]
    parity_tolerance: float | None  # None: derived per stage and size (clif_serve.export.parity)
    batch: Range
    height: Range
    width: Range
    concept_rows: Range
    lora_rank: Range
    tensorrt: TensorRTSettings
    regions: int = 0
    lora_bank: BankSettings = BankSettings()

    def to_dict(self) -> dict:
        """The recipe as written into the export manifest."""
        return {
            "name": self.name,
            "opset": self.opset,
            "precision": self.precision,
            "unet_variants": list(self.unet_variants),
            "parity_tolerance": self.parity_tolerance,
            "batch": self.batch.as_list(),
            "height": self.height.as_list(),
            "width": self.width.as_list(),
            "concept_rows": self.concept_rows.as_list(),
            "lora_rank": self.lora_rank.as_list(),
            "regions": self.regions,
            "lora_bank": {"sets": self.lora_bank.sets, "rank": self.lora_bank.rank},
            "tensorrt": {
                "precision": self.tensorrt.precision,
                "workspace_gib": self.tensorrt.workspace_gib,
                "refit": self.tensorrt.refit,
                "profiles": [
                    {"batch": p.batch.as_list(), "height": p.height.as_list(), "width": p.width.as_list()}
                    for p in self.tensorrt.profiles
                ],
            },
        }

    def deployment(self, spec: ModelSpec, merged_lora: str | None = None) -> Deployment:
        """The deployment an export of a base model with this recipe makes."""
        bank = "bank" in self.unet_variants
        return Deployment(
            spec=spec,
            stages=model_stages(spec, with_unet_lora="lora" in self.unet_variants, with_unet_bank=bank),
            batch=self.batch,
            height=self.height,
            width=self.width,
            concept_rows=self.concept_rows,
            lora_rank=self.lora_rank,
            merged_lora=merged_lora,
            regions=self.regions,
            bank_slots=self.lora_bank.slots if bank else 0,
            bank_rank=self.lora_bank.rank if bank else 0,
        )

    def validate_for(self, spec: ModelSpec) -> None:
        """Image sizes must be multiples of the model's image multiple (VAE factor x UNet down factor)."""
        image_multiple = spec.image_multiple
        sizes = [("height", self.height), ("width", self.width)]
        sizes += [
            (f"tensorrt.profiles[{i}].{axis}", getattr(p, axis))
            for i, p in enumerate(self.tensorrt.profiles)
            for axis in ("height", "width")
        ]
        for field, size in sizes:
            bad = [value for value in size.as_list() if value % image_multiple]
            if bad:
                raise InputError(
                    f"recipe {self.name}: {field}",
                    f"{bad[0]} is not a multiple of {image_multiple} (the {spec.kind} model's VAE and UNet factors)",
                )


def _range(data: dict, field: str, low: int = 1, prefix: str = "") -> Range:
    value = data.get(field)
    name = prefix + field
    if isinstance(value, list) and len(value) == 3:
        value = dict(zip(("min", "opt", "max"), value, strict=True))
    if not isinstance(value, dict) or set(value) != {"min", "opt", "max"}:
        raise InputError(name, "must be a table {min, opt, max} or a list [min, opt, max]")
    numbers = [value[key] for key in ("min", "opt", "max")]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        raise InputError(name, f"min, opt and max must be integers, got {numbers}")
    if not low <= numbers[0] <= numbers[1] <= numbers[2]:
        raise InputError(name, f"needs {low} <= min <= opt <= max, got {numbers}")
    return Range(*numbers)


def _choice(data: dict, field: str, choices: tuple[str, ...], default: str, prefix: str = "") -> str:
    value = data.get(field, default)
    if value not in choices:
        raise InputError(prefix + field, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _tensorrt(data: dict, batch: Range, height: Range, width: Range) -> TensorRTSettings:
    """TensorRT settings; each profile must lie inside the recipe's ranges (the ONNX export's)."""
    outer = {"batch": batch, "height": height, "width": width}
    profiles = []
    for index, item in enumerate(data.get("profiles", [])):
        prefix = f"tensorrt.profiles[{index}]."
        ranges = {axis: _range(item, axis, prefix=prefix) for axis in outer}
        for axis, inner in ranges.items():
            if inner.min < outer[axis].min or inner.max > outer[axis].max:
                raise InputError(
                    prefix + axis, f"{inner.as_list()} is outside the recipe's {axis} {outer[axis].as_list()}"
                )
        profiles.append(Profile(**ranges))
    workspace = data.get("workspace_gib", 4.0)
    if not isinstance(workspace, int | float) or workspace <= 0:
        raise InputError("tensorrt.workspace_gib", f"must be a positive number, got {workspace!r}")
    refit = data.get("refit", False)
    if not isinstance(refit, bool):
        raise InputError("tensorrt.refit", f"must be true or false, got {refit!r}")
    return TensorRTSettings(
        _choice(data, "precision", TENSORRT_PRECISIONS, "fp16", "tensorrt."),
        float(workspace),
        tuple(profiles) or (Profile(batch, height, width),),
        refit,
    )


def _regions(data: dict, variants: tuple[str, ...], batch: Range) -> int:
    """Region slots: a request's prompt, negative prompt and region prompts are one text-encoder call, so at
    most the batch maximum less 2."""
    regions = data.get("regions", 0)
    if isinstance(regions, bool) or not isinstance(regions, int) or not 0 <= regions <= MAX_REGION_SLOTS:
        raise InputError("regions", f"must be an integer in [0, {MAX_REGION_SLOTS}], got {regions!r}")
    if regions and "lora" not in variants:
        raise InputError("regions", "region inputs are on unet_lora: list 'lora' in unet_variants")
    if regions + 2 > batch.max:
        raise InputError(
            "regions", f"{regions} regions + prompt + negative prompt exceed the batch maximum {batch.max} "
            "(they are one text-encoder call)"
        )
    return regions


def _bank(data: dict) -> BankSettings:
    """`lora_bank = { sets, rank }`, both integers >= 1 (defaults: 8 sets of rank 16)."""
    if not isinstance(data, dict) or set(data) - {"sets", "rank"}:
        raise InputError("lora_bank", f"must be a table with keys sets and rank, got {data!r}")
    values = {key: data.get(key, getattr(BankSettings, key)) for key in ("sets", "rank")}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"lora_bank.{key}", f"must be an integer >= 1, got {value!r}")
    return BankSettings(**values)


def recipe_from_dict(data: dict, name: str) -> Recipe:
    """Build and validate a recipe from parsed TOML; errors name the offending key."""
    variants = tuple(data.get("unet_variants", ["plain"]))
    unknown = [v for v in variants if v not in UNET_VARIANTS]
    if unknown or "plain" not in variants:
        raise InputError("unet_variants", f"must list 'plain' and optionally 'lora' and 'bank', got {list(variants)}")
    opset = data.get("opset", 18)
    if not isinstance(opset, int) or not 17 <= opset <= 23:
        raise InputError("opset", f"must be an integer in [17, 23], got {opset!r}")
    tolerance = data.get("parity_tolerance")
    if tolerance is not None and (not isinstance(tolerance, int | float) or not 0 < tolerance < 1):
        raise InputError("parity_tolerance", f"must be a number in (0, 1), got {tolerance!r}")
    batch = _range(data, "batch")
    if batch.max < 2:
        raise InputError("batch", "max must be at least 2 (classifier-free guidance runs two samples)")
    height, width = _range(data, "height", low=8), _range(data, "width", low=8)
    return Recipe(
        name=str(data.get("name", name)),
        opset=opset,
        precision=_choice(data, "precision", ONNX_PRECISIONS, "fp32"),
        unet_variants=variants,
        parity_tolerance=None if tolerance is None else float(tolerance),
        batch=batch,
        height=height,
        width=width,
        concept_rows=_range(data, "concept_rows"),
        lora_rank=_range(data, "lora_rank"),
        tensorrt=_tensorrt(data.get("tensorrt", {}), batch, height, width),
        regions=_regions(data, variants, batch),
        lora_bank=_bank(data.get("lora_bank", {})),
    )


def recipe_path(name_or_file: str | Path) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe."""
    path = Path(name_or_file)
    if path.is_file():
        return path
    candidate = RECIPES_DIR / f"{name_or_file}.toml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))) or f"none found in {RECIPES_DIR}"
    raise InputError("recipe", f"{str(name_or_file)!r} is neither a file nor a known recipe ({known})")


def load_recipe(name_or_file: str | Path) -> Recipe:
    """Read and validate a recipe by name (`tiny`, `sd15-512`, ...) or path."""
    path = recipe_path(name_or_file)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError("recipe", f"{path}: not valid TOML ({exc})") from exc
    return recipe_from_dict(data, path.stem)


def default_recipe_name(model: object, spec: ModelSpec) -> str:
    """`tiny` -> tiny, `tiny-xl` -> tiny-xl; anything else (a folder) -> sd15-512 or sdxl-1024 by layout."""
    return DEFAULT_RECIPES.get(str(model), DEFAULT_RECIPES[spec.kind])
