"""The concept store: a folder of pack files shared by every server instance, replica and writer.

```
<name>.safetensors          one concept pack per concept, written atomically (temporary file + rename)
.version                    a change counter, replaced atomically after every change
.lock                       flock()ed while a change is made, so writers (servers, replicas, training,
                            scripts) never interleave
loras/<set id>.safetensors  the LoRA set of a pack, content-addressed, pinned by the requests using it
```
Every change goes through `ConceptStore`: it takes the lock, writes (or deletes) the pack file,
then bumps `.version`. Readers (`StoreSync`) check the store's `stamp()` (`.version` and the
folder's modification time: a pack renamed into place by a writer killed before its bump is
seen too) per request and re-read what changed, so anything written through a `ConceptStore` — a
hot-load, `clif-serve train --out` into a store folder, a script — is seen by running servers on
their next request. Saving a pack the store already holds changes nothing, so a retried hot-load
is safe.
Opening a store removes temporary files a crashed writer left behind (safe: every writer writes
them under the lock) and LoRA files nothing refers to.

LoRA pins. A request that uses a LoRA set pins its file (`pin_lora`: a shared flock on
`loras/<set id>.safetensors`, created from the request's own copy of the set if missing) until it
ends. A LoRA file is deleted only when no pack names its set and nobody holds a pin (an exclusive
non-blocking flock succeeds), so removing or replacing a pack never takes the LoRA from a request
in flight, in any process or replica sharing the folder; a pin dies with its process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clif_serve.concepts.pack import (
    ConceptPack,
    pack_to_bytes,
    read_manifest,
    read_pack,
    same_content,
    validate_name,
    write_atomically,
)
from clif_serve.errors import PackError
from clif_serve.lora.blob import lora_bytes, read_lora
from clif_serve.lora.weights import LoraWeights, validate_set_id

log = logging.getLogger(__name__)

PACK_SUFFIX = ".safetensors"
VERSION_FILE = ".version"
LOCK_FILE = ".lock"
LORA_DIR = "loras"


@dataclass
class _FolderLock:
    """The flock of one store folder in this process, reentrant across threads' nested uses."""

    lock: threading.RLock
    depth: int = 0
    handle: object = None


_FOLDER_LOCKS: dict[Path, _FolderLock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


class LoraPin:
    """A held pin of one stored LoRA set (a shared flock on its file); `release()` once done."""

    def __init__(self, fd: int, set_id: str):
        self._fd: int | None = fd
        self.set_id = set_id

    def release(self) -> None:
        """Drop the pin (closing the file drops its flock); idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


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
        """The store's change counter ("0" for a store never changed; whatever a damaged file holds)."""
        try:
            return (self.folder / VERSION_FILE).read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return "0"

    def stamp(self) -> tuple[str, int]:
        """What changes with every change of the store: its version and the folder's modification time."""
        return self.version(), self.folder.stat().st_mtime_ns

    def _bump_version(self) -> str:
        current = self.version()
        try:
            number = int(current)
        except ValueError:
            log.warning("concept store %s: %s held %r, not a counter; restarting it", self.folder, VERSION_FILE, current[:40])
            number = 0
        version = str(number + 1)
        write_atomically(self.folder / VERSION_FILE, version.encode())
        return version

    def holds(self, pack: ConceptPack) -> bool:
        """Whether the store holds this very pack (same manifest, LoRA set and embeddings)."""
        try:
            stored = read_pack(self.path_of(pack.name))
        except PackError:  # absent, or a file that is no usable pack
            return False
        return same_content(stored, pack)

    def save(self, pack: ConceptPack) -> Path:
        """Write (or overwrite) a concept's pack atomically and bump the version; the same content changes nothing."""
        path = self.path_of(pack.name)
        with self.locked():
            if self.holds(pack):
                return path
            previous = self._lora_set_of(path)
            write_atomically(path, pack_to_bytes(pack))
            self._bump_version()
            self.collect_loras({previous} - {None})
        return path

    def delete(self, name: str) -> None:
        """Remove a concept's pack file and bump the version; a missing file is an error naming the concept."""
        path = self.path_of(name)
        with self.locked():
            if not path.is_file():
                raise PackError("name", f"no concept named {name!r} in the store")
            previous = self._lora_set_of(path)
            path.unlink()
            self._bump_version()
            self.collect_loras({previous} - {None})

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
        """Delete temporary files of writers that died mid-write (under the lock: no live writer has one),
        and LoRA files no pack names and no request pins."""
        with self.locked():
            stale = [
                path
                for folder in (self.folder, self.folder / LORA_DIR)
                for path in folder.glob(".*")
                if path.name not in (VERSION_FILE, LOCK_FILE)
            ]
            for path in stale:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    path.unlink()
            self.collect_loras()
        if stale:
            log.warning("concept store %s: removed %d stale temporary file(s)", self.folder, len(stale))
        return stale

    # --- LoRA sets: content-addressed files pinned by the requests that use them ---

    def lora_path(self, set_id: str) -> Path:
        """Where LoRA set `set_id` is kept (the id is checked, so no path tricks)."""
        return self.folder / LORA_DIR / f"{validate_set_id(set_id)}{PACK_SUFFIX}"

    def pin_lora(self, lora: LoraWeights) -> LoraPin:
        """Pin a LoRA set for a request (writing its file from `lora` if the store has none); `release()` it after."""
        path = self.lora_path(lora.set_id)
        pin = _open_pinned(path, lora.set_id)
        if pin is None:
            with self.locked():  # nobody collects LoRA files while the lock is held
                if not path.is_file():
                    path.parent.mkdir(exist_ok=True)
                    write_atomically(path, lora_bytes(lora))
                pin = _open_pinned(path, lora.set_id)
        if pin is None:
            raise PackError("lora_id", f"LoRA set {lora.set_id} could not be pinned in {self.folder}")
        return pin

    def read_lora(self, set_id: str) -> LoraWeights:
        """A stored LoRA set by id (a request pins it while it runs); PackError naming `lora_id` when absent."""
        path = self.lora_path(set_id)
        if not path.is_file():
            raise PackError("lora_id", f"no LoRA set {set_id} in the concept store (no request holds it)")
        return read_lora(path, set_id)

    def lora_pinned(self, set_id: str) -> bool:
        """Whether some request (of any process) pins LoRA set `set_id` now."""
        fd = _open(self.lora_path(set_id))
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def collect_loras(self, candidates: Iterable[str] | None = None) -> list[str]:
        """Delete LoRA files (all, or those of `candidates`) that no pack names and no request pins."""
        folder = self.folder / LORA_DIR
        with self.locked():
            if candidates is None:
                ids = [path.name[: -len(PACK_SUFFIX)] for path in folder.glob(f"[!.]*{PACK_SUFFIX}")]
            else:
                ids = list(candidates)
            if not ids:
                return []
            named = self._named_lora_sets()
            collected = [set_id for set_id in ids if set_id not in named and self._delete_unpinned(set_id)]
        return collected

    def _delete_unpinned(self, set_id: str) -> bool:
        try:
            path = self.lora_path(set_id)
        except PackError:  # a file name that is no set id: not ours to judge, leave it
            return False
        fd = _open(path)
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a request holds it; a later change collects it
        else:
            path.unlink()
            return True
        finally:
            os.close(fd)

    def _named_lora_sets(self) -> set[str]:
        """LoRA set ids named by the manifests of the packs in the store (headers only)."""
        return {set_id for set_id in map(self._lora_set_of, self._pack_paths()) if set_id is not None}

    def _pack_paths(self) -> list[Path]:
        return [path for path in self.folder.glob(f"*{PACK_SUFFIX}") if not path.name.startswith(".")]

    @staticmethod
    def _lora_set_of(path: Path) -> str | None:
        """The LoRA set a pack file's manifest names (None: none, or not a readable pack)."""
        try:
            return read_manifest(path).get("lora_set")
        except (OSError, PackError):
            return None


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def _open_pinned(path: Path, set_id: str) -> LoraPin | None:
    """A shared flock on an existing LoRA file, or None if it is absent (or was collected meanwhile)."""
    fd = _open(path)
    if fd is None:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    if os.fstat(fd).st_nlink == 0:  # collected between open and flock
        os.close(fd)
        return None
    return LoraPin(fd, set_id)
