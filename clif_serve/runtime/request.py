"""A generation request and its validation; every error names the request field."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

from clif_serve.errors import InputError
from clif_serve.models.spec import ModelSpec

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RequestLimits:
    """Accepted ranges; serving narrows the image sizes to the exported profile."""

    min_steps: int = 1
    max_steps: int = 150
    min_guidance: float = 0.0
    max_guidance: float = 30.0
    min_size: int = 8
    max_size: int = 2048
    max_images: int = 8


@dataclass(frozen=True)
class GenerationRequest:
    """What to draw. Triggers such as `<joe>` may appear anywhere in the prompts."""

    prompt: str
    negative_prompt: str | None = None
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int = 0
    height: int | None = None
    width: int | None = None
    num_images: int = 1

    def validated(self, spec: ModelSpec, limits: RequestLimits = RequestLimits()) -> GenerationRequest:
        """Check every field and fill the default size; raise InputError naming the bad field."""
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
            if value % 8:
                raise InputError(field, f"must be a multiple of 8, got {value}")
        return replace(self, height=height, width=width)

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0


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
