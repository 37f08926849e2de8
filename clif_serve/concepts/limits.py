"""Limits of the concept pack format (no heavy imports: the CLI and the serving options read them)."""

from __future__ import annotations

DEFAULT_MAX_PACK_BYTES = 256 * 1024 * 1024
