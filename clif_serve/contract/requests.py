"""Request limits and defaults: what a generation request may ask for, and what it gets unasked.

A deployment's limits follow from its export (image sizes of the recipe, the UNet's batch range);
in process with a PyTorch model they follow from the model (its image multiple).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Request defaults (the served model's config publishes them; the client and the CLI use them).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 7.5
DEFAULT_SEED = 0
DEFAULT_NUM_IMAGES = 1
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RequestLimits:
    """Accepted ranges of the request fields (inclusive); image sizes also a multiple of `size_multiple`."""

    min_steps: int = 1
    max_steps: int = 150
    min_guidance: float = 0.0
    max_guidance: float = 30.0
    min_size: int = 8
    max_size: int = 2048
    size_multiple: int = 8
    max_images: int = 8


def size_multiple(image_multiple: int) -> int:
    """What image sizes must be multiples of: the model's image multiple, and at least 8 (as diffusers asks)."""
    return math.lcm(8, image_multiple)
