"""`StoreSync`: a `ConceptRegistry` kept equal to the valid packs of a concept store.

`refresh()` reads the store's `stamp()` (`.version` and the folder's modification time: one small
read and one stat, per request) and, only when it moved, re-reads the pack files whose stat changed. So the very next request on any instance sees an
accepted pack, and a restart loads exactly the stored packs. A pack file that cannot be used
(unreadable, a name that does not match its file, refused by `accept`) is skipped and remembered
with the reason (`skipped`), so listing the store can show it and removal can delete it, and retried
whenever the store changes (what refused it may be gone). A file that a writer removes between the
listing and the read is simply gone (the writer's version bump makes the next refresh list the store
again). Packs are read with the same size limit the hot-load accepts (`max_pack_bytes`), so an
accepted pack loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from clif_serve.concepts.limits import DEFAULT_MAX_PACK_BYTES
from clif_serve.concepts.pack import ConceptPack, read_pack
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.concepts.store import PACK_SUFFIX, ConceptStore
from clif_serve.errors import PackError
from clif_serve.models.spec import ModelSpec

log = logging.getLogger(__name__)

PackCheck = Callable[[ConceptPack], None]


class StoreSync:
    """Keeps a registry equal to the usable packs of a store folder.

    `accept(pack)` raises PackError for a pack this reader cannot use (e.g. a LoRA set its
    deployment has no route for); such packs are skipped like unreadable ones.
    """

    def __init__(
        self,
        folder: str | Path | ConceptStore,
        spec: ModelSpec,
        accept: PackCheck | None = None,
        max_pack_bytes: int = DEFAULT_MAX_PACK_BYTES,
    ):
        self.store = folder if isinstance(folder, ConceptStore) else ConceptStore(folder)
        self.registry = ConceptRegistry(spec)
        self.accept = accept
        self.max_pack_bytes = max_pack_bytes
        self.skipped: dict[str, str] = {}
        self._stamp: tuple[str, int] | None = None
        self._stats: dict[str, tuple[int, int, int]] = {}

    @property
    def folder(self) -> Path:
        return self.store.folder

    def refresh(self) -> bool:
        """Reload what changed since the last call; True when the store's stamp had moved."""
        stamp = self.store.stamp()
        if stamp == self._stamp:
            return False
        current = self.store.entries()
        for name in set(self._stats) - set(current):
            self._forget(name)
        for name, stat in sorted(current.items()):
            # A skipped pack is retried on every change: what refused it (a trigger another pack held)
            # may be gone although its own file is unchanged.
            if self._stats.get(name) != stat or name in self.skipped:
                self._load(name, stat)
        self._stamp = stamp
        return True

    def reset(self) -> None:
        """Forget what was loaded, so the next `refresh` re-reads the whole store."""
        for name in self.registry.names():
            self.registry.remove(name)
        self._stats.clear()
        self.skipped.clear()
        self._stamp = None

    def _forget(self, name: str) -> None:
        self._stats.pop(name, None)
        self.skipped.pop(name, None)
        if name in self.registry:
            self.registry.remove(name)

    def _load(self, name: str, stat: tuple[int, int, int]) -> None:
        self._stats[name] = stat
        refused_before = self.skipped.pop(name, None)
        path = self.store.path_of(name)
        try:
            pack = read_pack(path, max_bytes=self.max_pack_bytes)
            if pack.name != name:
                raise PackError("name", f"file {name}{PACK_SUFFIX} holds concept {pack.name!r}")
            if self.accept is not None:
                self.accept(pack)
            self.registry.add(pack, replace=True)
        except PackError as exc:
            if not path.exists():  # removed by a writer since it was listed: gone, not broken
                self._forget(name)
                return
            if str(exc) != refused_before:
                log.warning("concept store %s: skipping %s%s: %s", self.folder, name, PACK_SUFFIX, exc)
            self.skipped[name] = str(exc)
            if name in self.registry:
                self.registry.remove(name)
