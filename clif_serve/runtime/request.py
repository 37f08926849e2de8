"""A generation request and its validation; every error names the request field."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

from clif_serve.contract.requests import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_IMAGES,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    MAX_SEED,
    RequestLimits,
    size_multiple,
)
from clif_serve.errors import InputError
from clif_serve.models.spec import ModelSpec


@dataclass(frozen=True)
class GenerationRequest:
    """What to draw. Triggers such as `<joe>` may appear anywhere in the prompts."""

    prompt: str
    negative_prompt: str | None = None
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    seed: int = DEFAULT_SEED
    height: int | None = None
    width: int | None = None
    num_images: int = DEFAULT_NUM_IMAGES

    def validated(self, spec: ModelSpec, limits: RequestLimits | None = None) -> GenerationRequest:
        """Check every field and fill the default size; raise InputError naming the bad field.

        `limits` default to the model's (`limits_for(spec)`)."""
        limits = limits if limits is not None else limits_for(spec)
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("prompt", "must be a non-empty string")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise InputError("negative_prompt", "must be a string")
        _check_int("steps", self.steps, limits.min_steps, limits.max_steps)
        _check_number("guidance_scale", self.guidance_scale, limits.min_guidance, limits.max_guidance)
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("num_images", self.num_images, 1, limits.max_images)
        height = spec.default_image_size if self.height is None else self.height
        width = spec.default_image_size if self.width is None else self.width
        for field, value in (("height", height), ("width", width)):
            _check_int(field, value, limits.min_size, limits.max_size)
            if value % limits.size_multiple:
                raise InputError(field, f"must be a multiple of {limits.size_multiple}, got {value}")
        return replace(self, height=height, width=width)

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0


def limits_for(spec: ModelSpec) -> RequestLimits:
    """The limits of a model run in process: sizes in multiples of its image multiple (at least 8)."""
    multiple = size_multiple(spec.image_multiple)
    return RequestLimits(min_size=multiple, size_multiple=multiple)


def _check_int(field: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(field, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InputError(field, f"must be in [{low}, {high}], got {value}")


def _check_number(field: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(field, f"must be a number, got {type(value).__name__}")
    if not low <= float(value) <= high:
        raise InputError(field, f"must be in [{low}, {high}], got {value}")
