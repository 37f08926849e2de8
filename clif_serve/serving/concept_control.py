"""Hot-load and removal of concepts in the served concept store (`clif_concepts`), validated first.

A pack is validated for the base model and against the deployment (`PackPolicy`: a LoRA route,
tokens within the served concept table, a LoRA rank within the exported range), then written to
the store under its lock, which bumps the store version; every pipeline instance and replica
sharing the folder sees it on its next request (`clif_serve.concepts.sync.StoreSync`). A refused
pack changes nothing. Adding a pack the store already holds succeeds without a change (a client
that lost the answer to an add can retry it), and packs the store holds but cannot serve
(`skipped`, with the reason) are listed and can be removed.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from clif_serve.concepts.limits import DEFAULT_MAX_CONCEPTS, DEFAULT_MAX_PACK_BYTES
from clif_serve.concepts.pack import ConceptPack, pack_from_bytes, validate_name
from clif_serve.concepts.sync import StoreSync
from clif_serve.contract.deployment import Deployment
from clif_serve.contract.routing import LoraRouting
from clif_serve.errors import InputError, PackError
from clif_serve.models.spec import ModelSpec
from clif_serve.paths import cache_dir
from clif_serve.serving.parameters import ModelParameters
from clif_serve.serving.protocol import (
    ACTION_ADD,
    ACTION_LIST,
    ACTION_REMOVE,
    ACTIONS,
    ConceptInfo,
    ConceptsReply,
    SkippedPack,
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


@dataclass(frozen=True)
class PackPolicy:
    """What a served deployment accepts in a pack, beyond fitting the base model."""

    spec: ModelSpec
    routing: LoraRouting
    max_tokens: int  # rows of the served concept table: a concept with more tokens can never be used
    max_lora_rank: int  # the largest LoRA rank served (unet_bank's bank rank, else unet_lora's range)
    max_pack_bytes: int = DEFAULT_MAX_PACK_BYTES
    max_concepts: int = DEFAULT_MAX_CONCEPTS

    @classmethod
    def of(cls, deployment: Deployment, parameters: ModelParameters) -> PackPolicy:
        """The policy of a deployment served with these model parameters."""
        routing = parameters.routing(deployment)
        return cls(
            spec=deployment.spec,
            routing=routing,
            max_tokens=deployment.served_concept_rows,
            max_lora_rank=deployment.bank_rank if routing.has_unet_bank else deployment.lora_rank.max,
            max_pack_bytes=parameters.max_pack_bytes,
            max_concepts=parameters.max_concepts,
        )

    def check(self, pack: ConceptPack) -> None:
        """Raise PackError naming the field when this deployment cannot serve `pack`."""
        pack.validate_for(self.spec)
        if pack.num_tokens > self.max_tokens:
            raise PackError(
                "tokens",
                f"{pack.num_tokens} tokens; this deployment's concept table holds {self.max_tokens} per prompt "
                "(recipe concept_rows)",
            )
        route = self.routing.route(lora_id_of(pack), field="unet")
        if route.adapter is not None:
            pack.lora.validate_rank(self.max_lora_rank)


class ConceptControl:
    """Hot-load and removal of concepts in a store, with validation before anything changes."""

    def __init__(self, folder: str | Path, policy: PackPolicy):
        self.policy = policy
        self.sync = StoreSync(folder, policy.spec, accept=policy.check, max_pack_bytes=policy.max_pack_bytes)

    def add(self, data: bytes, replace: bool = False) -> tuple[ConceptPack, bool]:
        """Validate a pack (bytes of a .safetensors file) and store it; returns it and whether the store changed.

        The store is unchanged when it already holds this exact pack (a retried add).
        """
        pack = pack_from_bytes(data, max_bytes=self.policy.max_pack_bytes, source="pack")
        self.policy.check(pack)
        store = self.sync.store
        with store.locked():
            self.sync.refresh()
            if store.holds(pack):
                return pack, False
            if pack.name in self.sync.skipped and not replace:
                raise PackError(
                    "name",
                    f"the store holds a pack named {pack.name!r} that it cannot serve "
                    f"({self.sync.skipped[pack.name]}); remove it first, or replace it",
                )
            stored = len(self.sync.registry) + len(self.sync.skipped)
            if pack.name not in self.sync.registry and stored >= self.policy.max_concepts:
                raise PackError(
                    "store", f"holds {stored} concepts, its capacity (--max-concepts {self.policy.max_concepts})"
                )
            # The registry checks name and trigger collisions (copy-on-write: a refusal changes nothing).
            self.sync.registry.add(pack, replace=replace)
            self._commit(lambda: store.save(pack))
        return pack, True

    def remove(self, name: str) -> str:
        """Remove a concept (or a pack the store skipped) from the store; an unknown name is refused naming it."""
        validate_name(name)
        with self.sync.store.locked():
            self.sync.refresh()
            if name not in self.sync.skipped:
                self.sync.registry.remove(name)
            self._commit(lambda: self.sync.store.delete(name))
        return name

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
        changed = True
        if action == ACTION_ADD:
            added, changed = self.add(self._pack_bytes(pack, pack_base64), replace=replace)
            concept = added.name
        elif action == ACTION_REMOVE:
            if name is None:
                raise InputError("name", "is required for action 'remove'")
            concept = self.remove(name)
        elif action == ACTION_LIST:
            concept, changed = None, False
        else:
            raise InputError("action", f"{action!r} is not one of {', '.join(ACTIONS)}")
        concepts, skipped, version = self.describe()
        return ConceptsReply(
            action=action, concept=concept, changed=changed, concepts=concepts, skipped=skipped, version=version
        )

    def _pack_bytes(self, pack: bytes | None, pack_base64: str | None) -> bytes:
        """The pack file's bytes, sent as they are (`pack`) or as base64 text (`pack_base64`)."""
        if (pack is None) == (pack_base64 is None):
            raise InputError("pack", "action 'add' takes the pack file as pack (bytes) or pack_base64 (text), one of them")
        if pack is not None:
            return pack
        if len(pack_base64) > 4 * (self.policy.max_pack_bytes // 3 + 1):
            raise InputError(
                "pack_base64", f"is {len(pack_base64)} characters, over the {self.policy.max_pack_bytes}-byte limit"
            )
        try:
            return base64.b64decode(pack_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError("pack_base64", f"is not base64 text ({exc})") from exc

    def describe(self) -> tuple[tuple[ConceptInfo, ...], tuple[SkippedPack, ...], str]:
        """The store now: its concepts (name, trigger, tokens, class word, LoRA set), the packs it
        skipped (name and reason) and its version."""
        with self.sync.store.locked():
            self.sync.refresh()
            packs = [self.sync.registry.get(name) for name in self.sync.registry.names()]
            skipped = tuple(SkippedPack(name, reason) for name, reason in sorted(self.sync.skipped.items()))
            version = self.sync.store.version()
        concepts = tuple(
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
        return concepts, skipped, version
