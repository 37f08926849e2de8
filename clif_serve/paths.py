"""Where clif-serve keeps its caches (embedded models, built artefacts)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: `$CLIF_SERVE_CACHE`, else `$XDG_CACHE_HOME/clif-serve`, else `~/.cache/clif-serve`."""
    explicit = os.environ.get("CLIF_SERVE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "clif-serve"


def staging_dir(target: Path, label: str = "staging") -> Path:
    """A fresh hidden folder beside `target`, to build it in and rename into place.

    It gets the permissions an ordinary `mkdir` would give (mkdtemp makes 0700, which would leave
    a renamed export or repository unreadable to a server running as another user).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}-{label}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    return folder


def cached_model_folder(name: str, marker: str, build: Callable[[Path], None]) -> Path:
    """`cache_dir()/models/<name>`, made once by `build(staging folder)` and renamed into place.

    `marker` is a file that only a complete folder has. Builders racing each other are safe: the
    rename is atomic and a loser's copy (identical: builds are seeded) is dropped.
    """
    target = cache_dir() / "models" / name
    if (target / marker).is_file():
        return target
    staging = staging_dir(target)
    try:
        build(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
