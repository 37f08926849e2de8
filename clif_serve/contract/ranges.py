"""An inclusive integer range with the size to optimise for (export recipes, deployments, profiles)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """An inclusive integer range `[min, max]` with the size to optimise for (`opt`)."""

    min: int
    opt: int
    max: int

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]

    @classmethod
    def of(cls, values) -> Range:
        """A range from `[min, opt, max]` (as written in manifests)."""
        low, opt, high = (int(v) for v in values)
        return cls(low, opt, high)

    def scaled(self, divisor: int) -> Range:
        """Every value divided by `divisor` (pixels -> latent cells)."""
        return Range(self.min // divisor, self.opt // divisor, self.max // divisor)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.min <= value <= self.max
