"""The concept store: a folder of pack files shared by every server instance, replica and writer.

```
<name>.safetensors   one concept pack per concept, written atomically (temporary file + rename)
.version             a change counter, replaced atomically after every change
.lock                flock()ed while a change is made, so writers (servers, replicas, training,
                     scripts) never interleave
```
Every change goes through `ConceptStore`: it takes the lock, writes (or deletes) the pack file,
then bumps `.version`. Readers (`StoreSync`) read `.version` per request and re-read what changed,
so anything written through a `ConceptStore` — a hot-load, `clif-serve train --out` into a store
folder, a script — is seen by running servers on their next request. Opening a store removes
temporary files a crashed writer left behind (safe: every writer writes them under the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clif_serve.concepts.pack import ConceptPack, validate_name, write_pack
from clif_serve.errors import PackError

log = logging.getLogger(__name__)

PACK_SUFFIX = ".safetensors"
VERSION_FILE = ".version"
LOCK_FILE = ".lock"


@dataclass
class _FolderLock:
    """The flock of one store folder in this process, reentrant across threads' nested uses."""

    lock: threading.RLock
    depth: int = 0
    handle: object = None


_FOLDER_LOCKS: dict[Path, _FolderLock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


class ConceptStore:
    """Pack files named `<concept name>.safetensors` in one folder, with the store's lock and version."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        with _FOLDER_LOCKS_GUARD:
            self._lock = _FOLDER_LOCKS.setdefault(self.folder.resolve(), _FolderLock(threading.RLock()))
        self.remove_stale_files()

    def path_of(self, name: str) -> Path:
        """Where the pack of concept `name` lives (the name is checked, so no path tricks)."""
        validate_name(name)
        return self.folder / f"{name}{PACK_SUFFIX}"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (reentrant within this process; an flock across processes)."""
        with self._lock.lock:
            if self._lock.depth == 0:
                self._lock.handle = open(self.folder / LOCK_FILE, "a")  # noqa: SIM115 (closed below)
                fcntl.flock(self._lock.handle, fcntl.LOCK_EX)
            self._lock.depth += 1
            try:
                yield
            finally:
                self._lock.depth -= 1
                if self._lock.depth == 0:
                    fcntl.flock(self._lock.handle, fcntl.LOCK_UN)
                    self._lock.handle.close()
                    self._lock.handle = None

    def version(self) -> str:
        """The store's change counter ("0" for a store never changed)."""
        try:
            return (self.folder / VERSION_FILE).read_text()
        except FileNotFoundError:
            return "0"

    def _bump_version(self) -> str:
        current = self.version()
        try:
            number = int(current)
        except ValueError:
            log.warning("concept store %s: %s held %r, not a counter; restarting it", self.folder, VERSION_FILE, current[:40])
            number = 0
        version = str(number + 1)
        fd, tmp = tempfile.mkstemp(prefix=f"{VERSION_FILE}.", dir=self.folder)
        with os.fdopen(fd, "w") as handle:
            handle.write(version)
        os.replace(tmp, self.folder / VERSION_FILE)
        return version

    def save(self, pack: ConceptPack) -> Path:
        """Write (or overwrite) a concept's pack atomically and bump the version."""
        with self.locked():
            path = write_pack(pack, self.path_of(pack.name))
            self._bump_version()
        return path

    def delete(self, name: str) -> None:
        """Remove a concept's pack file and bump the version; a missing file is an error naming the concept."""
        path = self.path_of(name)
        with self.locked():
            if not path.is_file():
                raise PackError("name", f"no concept named {name!r} in the store")
            path.unlink()
            self._bump_version()

    def entries(self) -> dict[str, tuple[int, int, int]]:
        """Concept name -> (mtime ns, size, inode) of every pack file now (a changed file changes its stat)."""
        found = {}
        for path in self.folder.glob(f"*{PACK_SUFFIX}"):
            if path.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                found[path.name[: -len(PACK_SUFFIX)]] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        return found

    def remove_stale_files(self) -> list[Path]:
        """Delete temporary files of writers that died mid-write (under the lock: no live writer has one)."""
        with self.locked():
            stale = [path for path in self.folder.glob(".*") if path.name not in (VERSION_FILE, LOCK_FILE)]
            for path in stale:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    path.unlink()
        if stale:
            log.warning("concept store %s: removed %d stale temporary file(s)", self.folder, len(stale))
        return stale
