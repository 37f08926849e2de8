"""Shared-memory regions of the Python-backend stubs: owned by one server, removed once it is gone.

Triton's python backend passes tensors through regions in /dev/shm and removes them when it shuts
down cleanly; a server killed with -9 (or OOM-killed) leaves them behind. Every server started by
`TritonServer` therefore gets its own region prefix `clif-serve-<token>-` (the python backend's
`shm-region-prefix-name`) and an owner file `clif-serve-<token>.owner` whose flock the server holds
through an inherited file descriptor, as long as it or any of its stubs live. At start, the regions
of every server whose owner lock is free are removed with its owner file; regions of live servers
and of servers not started this way (other prefixes) are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "clif-serve-"
OWNER_SUFFIX = ".owner"
_CLAIM_TEMP = ".clif-serve-claim-"


@dataclass
class RegionClaim:
    """The region prefix of one server and the descriptor of its owner lock (inherited by the server)."""

    token: str
    fd: int | None
    folder: Path = SHM_DIR

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.token}-"

    def backend_option(self) -> str:
        """The tritonserver option that makes the python backend name its regions with this prefix."""
        return f"--backend-config=python,shm-region-prefix-name={self.prefix}"

    def close(self) -> None:
        """Close this process's copy of the owner lock (the server keeps its own); idempotent."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def claim_regions(folder: Path = SHM_DIR) -> RegionClaim | None:
    """A fresh region prefix with its owner lock held (None where there is no shared-memory folder).

    The lock is taken before the owner file gets its name, so a concurrent cleanup never sees it free.
    """
    if not folder.is_dir():
        return None
    fd, temp = tempfile.mkstemp(prefix=_CLAIM_TEMP, dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX)
    token = secrets.token_hex(8)
    os.rename(temp, folder / f"{PREFIX}{token}{OWNER_SUFFIX}")
    os.set_inheritable(fd, True)
    return RegionClaim(token, fd, folder)


def remove_stale_regions(folder: Path = SHM_DIR, token: str | None = None) -> list[Path]:
    """Remove the regions and owner files of servers no process holds any more (all, or `token`'s)."""
    if not folder.is_dir():
        return []
    owners = [folder / f"{PREFIX}{token}{OWNER_SUFFIX}"] if token else sorted(folder.glob(f"{PREFIX}*{OWNER_SUFFIX}"))
    owners += sorted(folder.glob(f"{_CLAIM_TEMP}*")) if token is None else []
    removed: list[Path] = []
    for owner in owners:
        try:
            fd = os.open(owner, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its server (or one of its stubs) still runs
        else:
            if owner.name.endswith(OWNER_SUFFIX):
                stale = owner.name[len(PREFIX) : -len(OWNER_SUFFIX)]
                removed += _unlink(folder.glob(f"{PREFIX}{stale}-*"))
            removed += _unlink([owner])
        finally:
            os.close(fd)
    if removed and token is None:
        log.warning("removed %d shared-memory file(s) of servers that are gone from %s", len(removed), folder)
    return removed


def _unlink(paths) -> list[Path]:
    done = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            done.append(path)
    return done
