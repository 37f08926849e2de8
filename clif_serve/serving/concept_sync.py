"""The served concept store: validated hot-load/remove, and the per-request sync of every pipeline.

Layout of a store folder (shared by every model instance of a server and by replicas):
    <name>.safetensors   one concept pack per concept (ConceptStore: atomic writes)
    .version             a counter, replaced atomically after every accepted change
    .lock                flock()ed while a change is made, so replicas never interleave

A change writes the pack file (or deletes it) first and bumps `.version` after, under the lock.
`StoreSync.refresh()` reads `.version` (one small read per request) and, only when it changed,
re-reads the pack files whose stat changed, so the very next request on any instance sees an
accepted pack, and a restart loads exactly the accepted packs. A refused pack changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from clif_serve.concepts.lora import LoraWeights
from clif_serve.concepts.pack import ConceptPack, check_name, pack_from_bytes, read_pack
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.concepts.store import PACK_SUFFIX, ConceptStore
from clif_serve.errors import InputError, PackError
from clif_serve.models.spec import ModelSpec
from clif_serve.paths import cache_dir
from clif_serve.serving.protocol import ACTION_ADD, ACTION_LIST, ACTION_REMOVE, ACTIONS

log = logging.getLogger(__name__)

STORE_ENV = "CLIF_SERVE_CONCEPT_STORE"
VERSION_FILE = ".version"
LOCK_FILE = ".lock"


def resolve_store(parameter: str, repo_root: Path, spec: ModelSpec) -> Path:
    """The store folder: `$CLIF_SERVE_CONCEPT_STORE`, else the config parameter (relative to the
    repository root), else `<cache>/concepts/<base model fingerprint>`."""
    explicit = os.environ.get(STORE_ENV) or parameter
    if explicit:
        return (repo_root / Path(explicit).expanduser()).resolve()
    return cache_dir() / "concepts" / spec.fingerprint


def read_version(folder: Path) -> str:
    """The store's change counter ("0" for a store never changed)."""
    try:
        return (folder / VERSION_FILE).read_text()
    except FileNotFoundError:
        return "0"


def _bump_version(folder: Path) -> str:
    version = str(int(read_version(folder) or 0) + 1)
    fd, tmp = tempfile.mkstemp(prefix=f"{VERSION_FILE}.", dir=folder)
    with os.fdopen(fd, "w") as handle:
        handle.write(version)
    os.replace(tmp, folder / VERSION_FILE)
    return version


def check_lora_servable(lora: LoraWeights | None, lora_stage: str, merged_lora: str | None) -> None:
    """Refuse a LoRA this server cannot run: it needs the `unet_lora` stage unless it is the merged set."""
    if lora is not None and not lora_stage and lora.set_id != merged_lora:
        raise PackError(
            "unet",
            f"the pack carries UNet LoRA set {lora.set_id} and this server has no unet_lora stage; serve an "
            "export with unet_lora (--backend python) or use an embedding-only pack",
        )


class StoreSync:
    """Keeps a `ConceptRegistry` equal to the valid packs of a store folder."""

    def __init__(
        self, folder: str | Path, spec: ModelSpec, lora_stage: str = "", merged_lora: str | None = None
    ):
        self.store = ConceptStore(folder)
        self.registry = ConceptRegistry(spec)
        self.lora_stage = lora_stage
        self.merged_lora = merged_lora
        self._version: str | None = None
        self._stats: dict[str, tuple[int, int, int]] = {}

    @property
    def folder(self) -> Path:
        return self.store.folder

    def refresh(self) -> bool:
        """Reload what changed since the last call; True when the store version had moved."""
        version = read_version(self.folder)
        if version == self._version:
            return False
        current = {}
        for path in self.folder.glob(f"*{PACK_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                current[path.name[: -len(PACK_SUFFIX)]] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        for name in set(self._stats) - set(current):
            self._forget(name)
        for name, stat in sorted(current.items()):
            if self._stats.get(name) != stat:
                self._load(name, stat)
        self._version = version
        return True

    def reset(self) -> None:
        """Forget what was loaded, so the next `refresh` re-reads the whole store."""
        for name in self.registry.names():
            self.registry.remove(name)
        self._stats.clear()
        self._version = None

    def _forget(self, name: str) -> None:
        self._stats.pop(name, None)
        if name in self.registry:
            self.registry.remove(name)

    def _load(self, name: str, stat: tuple[int, int, int]) -> None:
        self._stats[name] = stat  # remembered even for a refused file, so an unchanged one is not re-read
        try:
            pack = read_pack(self.store.path_of(name))
            if pack.name != name:
                raise PackError("name", f"file {name}{PACK_SUFFIX} holds concept {pack.name!r}")
            check_lora_servable(pack.lora, self.lora_stage, self.merged_lora)
            self.registry.add(pack, replace=True)
        except PackError as exc:
            log.warning("concept store %s: skipping %s%s: %s", self.folder, name, PACK_SUFFIX, exc)
            if name in self.registry:
                self.registry.remove(name)


class ConceptControl:
    """Hot-load and removal of concepts in a store, with validation before anything changes."""

    def __init__(
        self,
        folder: str | Path,
        spec: ModelSpec,
        max_pack_bytes: int,
        lora_stage: str = "",
        merged_lora: str | None = None,
    ):
        self.spec = spec
        self.max_pack_bytes = max_pack_bytes
        self.sync = StoreSync(folder, spec, lora_stage, merged_lora)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.sync.folder / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self.sync.refresh()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add(self, data: bytes, replace: bool = False) -> ConceptPack:
        """Validate a pack (bytes of a .safetensors file) for this base and store it; returns the pack."""
        pack = pack_from_bytes(data, max_bytes=self.max_pack_bytes, source="pack")
        pack.validate_for(self.spec)
        check_lora_servable(pack.lora, self.sync.lora_stage, self.sync.merged_lora)
        with self._locked():
            # The registry checks name and trigger collisions (copy-on-write: a refusal changes nothing).
            self.sync.registry.add(pack, replace=replace)
            self._commit(lambda: self.sync.store.save(pack))
        return pack

    def remove(self, name: str) -> ConceptPack:
        """Remove a concept from the store; an unknown name is refused naming it."""
        check_name(name)
        with self._locked():
            pack = self.sync.registry.remove(name)
            self._commit(lambda: self.sync.store.delete(name))
        return pack

    def _commit(self, change) -> None:
        """Apply a file change, then bump the version; if the change fails, resync from the files."""
        try:
            change()
        except BaseException:
            self.sync.reset()
            raise
        _bump_version(self.sync.folder)

    def handle(
        self, action: str, pack: bytes | None = None, name: str | None = None, replace: bool = False
    ) -> dict:
        """Run one control action (add / remove / list) and describe the store afterwards."""
        if action == ACTION_ADD:
            if pack is None:
                raise InputError("pack", "is required for action 'add'")
            changed = self.add(pack, replace=replace).name
        elif action == ACTION_REMOVE:
            if name is None:
                raise InputError("name", "is required for action 'remove'")
            changed = self.remove(name).name
        elif action == ACTION_LIST:
            changed = None
        else:
            raise InputError("action", f"{action!r} is not one of {', '.join(ACTIONS)}")
        return {"action": action, "concept": changed, "concepts": self.describe(), "version": self.version()}

    def describe(self) -> list[dict]:
        """The concepts in the store now: name, trigger, tokens, class word, whether a LoRA comes with it."""
        with self._locked():
            packs = [self.sync.registry.get(name) for name in self.sync.registry.names()]
        return [
            {
                "name": p.name,
                "trigger": p.trigger,
                "tokens": list(p.tokens),
                "class_word": p.class_word,
                "lora": p.lora is not None,
            }
            for p in packs
        ]

    def version(self) -> str:
        """The store version after the last change seen."""
        return read_version(self.sync.folder)
