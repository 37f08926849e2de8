"""Hot-load and removal of concepts in the served concept store (`clif_concepts`), validated first.

A pack is validated for the base model and checked against the deployment's LoRA routing (a
LoRA set it has no route for is refused), then written to the store under its lock, which bumps
the store version; every pipeline instance and replica sharing the folder sees it on its next
request (`clif_serve.concepts.sync.StoreSync`). A refused pack changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from clif_serve.concepts.pack import ConceptPack, pack_from_bytes, validate_name
from clif_serve.concepts.sync import StoreSync
from clif_serve.contract.routing import LoraRouting
from clif_serve.errors import InputError
from clif_serve.models.spec import ModelSpec
from clif_serve.paths import cache_dir
from clif_serve.serving.protocol import (
    ACTION_ADD,
    ACTION_LIST,
    ACTION_REMOVE,
    ACTIONS,
    ConceptInfo,
    ConceptsReply,
)

STORE_ENV = "CLIF_SERVE_CONCEPT_STORE"


def resolve_store(parameter: str, repo_root: Path, spec: ModelSpec) -> Path:
    """The store folder: `$CLIF_SERVE_CONCEPT_STORE`, else the config parameter (relative to the
    repository root), else `<cache>/concepts/<base model fingerprint>`."""
    explicit = os.environ.get(STORE_ENV) or parameter
    if explicit:
        return (repo_root / Path(explicit).expanduser()).resolve()
    return cache_dir() / "concepts" / spec.fingerprint


def lora_id_of(pack: ConceptPack) -> str | None:
    """The LoRA set a pack carries, if any."""
    return None if pack.lora is None else pack.lora.set_id


class ConceptControl:
    """Hot-load and removal of concepts in a store, with validation before anything changes."""

    def __init__(self, folder: str | Path, spec: ModelSpec, max_pack_bytes: int, routing: LoraRouting):
        self.spec = spec
        self.max_pack_bytes = max_pack_bytes
        self.routing = routing
        self.sync = StoreSync(folder, spec)

    def add(self, data: bytes, replace: bool = False) -> ConceptPack:
        """Validate a pack (bytes of a .safetensors file) for this base and store it; returns the pack."""
        pack = pack_from_bytes(data, max_bytes=self.max_pack_bytes, source="pack")
        pack.validate_for(self.spec)
        self.routing.validate(lora_id_of(pack), field="unet")
        with self.sync.store.locked():
            self.sync.refresh()
            # The registry checks name and trigger collisions (copy-on-write: a refusal changes nothing).
            self.sync.registry.add(pack, replace=replace)
            self._commit(lambda: self.sync.store.save(pack))
        return pack

    def remove(self, name: str) -> ConceptPack:
        """Remove a concept from the store; an unknown name is refused naming it."""
        validate_name(name)
        with self.sync.store.locked():
            self.sync.refresh()
            pack = self.sync.registry.remove(name)
            self._commit(lambda: self.sync.store.delete(name))
        return pack

    def _commit(self, change) -> None:
        """Apply a store change; if it fails, resync from the files."""
        try:
            change()
        except BaseException:
            self.sync.reset()
            raise

    def handle(
        self,
        action: str,
        pack: bytes | None = None,
        pack_base64: str | None = None,
        name: str | None = None,
        replace: bool = False,
    ) -> ConceptsReply:
        """Run one control action (add / remove / list) and describe the store afterwards."""
        if action == ACTION_ADD:
            changed = self.add(self._pack_bytes(pack, pack_base64), replace=replace).name
        elif action == ACTION_REMOVE:
            if name is None:
                raise InputError("name", "is required for action 'remove'")
            changed = self.remove(name).name
        elif action == ACTION_LIST:
            changed = None
        else:
            raise InputError("action", f"{action!r} is not one of {', '.join(ACTIONS)}")
        return ConceptsReply(action=action, concept=changed, concepts=self.describe(), version=self.version())

    def _pack_bytes(self, pack: bytes | None, pack_base64: str | None) -> bytes:
        """The pack file's bytes, sent as they are (`pack`) or as base64 text (`pack_base64`)."""
        if (pack is None) == (pack_base64 is None):
            raise InputError("pack", "action 'add' takes the pack file as pack (bytes) or pack_base64 (text), one of them")
        if pack is not None:
            return pack
        if len(pack_base64) > 4 * (self.max_pack_bytes // 3 + 1):
            raise InputError("pack_base64", f"is {len(pack_base64)} characters, over the {self.max_pack_bytes}-byte limit")
        try:
            return base64.b64decode(pack_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError("pack_base64", f"is not base64 text ({exc})") from exc

    def describe(self) -> tuple[ConceptInfo, ...]:
        """The concepts in the store now: name, trigger, tokens, class word and LoRA set."""
        with self.sync.store.locked():
            self.sync.refresh()
            packs = [self.sync.registry.get(name) for name in self.sync.registry.names()]
        return tuple(
            ConceptInfo(
                name=p.name,
                trigger=p.trigger,
                tokens=tuple(p.tokens),
                class_word=p.class_word,
                lora=p.lora is not None,
                lora_set=lora_id_of(p),
            )
            for p in packs
        )

    def version(self) -> str:
        """The store version after the last change seen."""
        return self.sync.store.version()
