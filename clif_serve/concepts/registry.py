"""The set of concepts a pipeline or server currently knows, keyed by name and by trigger.

Adds and removes are copy-on-write under a lock: a request takes a `snapshot()` and keeps using
it even while concepts are hot-loaded or removed, and a refused pack changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from clif_serve.concepts.pack import ConceptPack, validate_name
from clif_serve.errors import PackError
from clif_serve.models.spec import ModelSpec


class ConceptRegistry:
    """Concept packs validated against one base model; thread-safe, copy-on-write."""

    def __init__(self, spec: ModelSpec, packs: Iterable[ConceptPack] = ()):
        self.spec = spec
        self._lock = threading.Lock()
        self._by_name: Mapping[str, ConceptPack] = MappingProxyType({})
        for pack in packs:
            self.add(pack)

    def add(self, pack: ConceptPack, replace: bool = False) -> None:
        """Validate `pack` for this base and add it; with `replace`, a pack of the same name is swapped."""
        pack.validate_for(self.spec)
        with self._lock:
            current = dict(self._by_name)
            if pack.name in current and not replace:
                raise PackError("name", f"a concept named {pack.name!r} is already loaded")
            current.pop(pack.name, None)
            for other in current.values():
                if other.trigger == pack.trigger:
                    raise PackError("trigger", f"{pack.trigger} is already used by concept {other.name!r}")
            current[pack.name] = pack
            self._by_name = MappingProxyType(current)

    def remove(self, name: str) -> ConceptPack:
        """Remove a concept by name and return it."""
        validate_name(name)
        with self._lock:
            current = dict(self._by_name)
            if name not in current:
                raise PackError("name", f"no concept named {name!r}; loaded: {', '.join(sorted(current)) or 'none'}")
            removed = current.pop(name)
            self._by_name = MappingProxyType(current)
        return removed

    def snapshot(self) -> Mapping[str, ConceptPack]:
        """An immutable view, by trigger, of the concepts loaded right now."""
        return MappingProxyType({pack.trigger: pack for pack in self._by_name.values()})

    def get(self, name: str) -> ConceptPack:
        """The pack of a loaded concept."""
        try:
            return self._by_name[name]
        except KeyError:
            raise PackError("name", f"no concept named {name!r}") from None

    def names(self) -> list[str]:
        """Names of the loaded concepts, sorted."""
        return sorted(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name
