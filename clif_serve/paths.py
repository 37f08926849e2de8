"""Where clif-serve keeps its caches (embedded models, built artefacts)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: `$CLIF_SERVE_CACHE`, else `$XDG_CACHE_HOME/clif-serve`, else `~/.cache/clif-serve`."""
    explicit = os.environ.get("CLIF_SERVE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "clif-serve"
