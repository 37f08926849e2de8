"""A bounded cache of LoRA adapters whose entries the requests using them pin.

Executors keep one built adapter per LoRA set (an onnxruntime adapter, a peft adapter inside the
UNet) keyed by the set's content id. Beyond `capacity`, the least recently used entry that no
request holds is dropped; an entry a request holds is never dropped under it, so eviction never
fails or alters a request in flight (the cache may exceed its capacity while every entry is held).
With capacity 0 an entry lives exactly as long as somebody pins it: counted pins of a resource
(the served pipeline holds its requests' pins of stored LoRA sets this way).

A cache of a fixed resource (the slots of a LoRA bank) cannot exceed its capacity: with
`wait_seconds` set, a miss while every entry is held waits until a holder releases one (it then
evicts the least recently used unheld entry and builds), and raises `CacheFullTimeout` only when
nobody released within `wait_seconds`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from clif_serve.errors import ClifServeError

Value = TypeVar("Value")

# How long a miss waits for a held entry to be released (a request for a slot of a full LoRA bank).
DEFAULT_WAIT_SECONDS = 60.0


class CacheFullTimeout(ClifServeError, TimeoutError):
    """Every entry of a bounded cache stayed held for longer than the cache waits for a free one."""


class PinnedCache(Generic[Value]):
    """Values by key, built on first use, least recently used unpinned ones dropped beyond `capacity`.

    `wait_seconds` (None: unbounded cache) makes `capacity` a hard bound: see the module docstring.
    """

    def __init__(
        self, capacity: int, drop: Callable[[str, Value], None] | None = None, wait_seconds: float | None = None
    ):
        if capacity < 0 or (wait_seconds is not None and capacity < 1):
            raise ValueError(f"capacity must be >= 0 (>= 1 with wait_seconds), got {capacity}")
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self._drop = drop
        self._values: OrderedDict[str, Value] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._lock = threading.Condition()

    def get(self, key: str, build: Callable[[], Value]) -> Value:
        """The value of `key`, built with `build()` on a miss (not pinned)."""
        with self._lock:
            value = self._lookup(key, build)
            self._evict(keep=key)
            return value

    def acquire(self, key: str, build: Callable[[], Value]) -> Value:
        """Like `get`, and pin the entry until a matching `release(key)`."""
        with self._lock:
            value = self._lookup(key, build)
            self._pins[key] = self._pins.get(key, 0) + 1
            self._evict()
            return value

    def release(self, key: str) -> None:
        """Drop one pin of `key` (taken by `acquire`); evict if the cache is over capacity."""
        with self._lock:
            count = self._pins.get(key, 0) - 1
            if count > 0:
                self._pins[key] = count
            else:
                self._pins.pop(key, None)
                self._lock.notify_all()
            self._evict()

    def pinned(self, key: str) -> Value:
        """The value of a key a caller holds; KeyError when it is not cached."""
        with self._lock:
            return self._values[key]

    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._values)

    def _lookup(self, key: str, build: Callable[[], Value]) -> Value:
        if self.wait_seconds is not None:
            self._make_room(key)
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        value = build()
        self._values[key] = value
        return value

    def _make_room(self, key: str) -> None:
        """Bounded cache, `key` missing: drop the least recently used unheld entry when full, waiting for
        one while all are held (or until another waiter built `key`)."""
        deadline = time.monotonic() + self.wait_seconds
        while key not in self._values and len(self._values) >= self.capacity:
            unheld = next((key for key in self._values if key not in self._pins), None)
            if unheld is not None:
                value = self._values.pop(unheld)
                if self._drop is not None:
                    self._drop(unheld, value)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise CacheFullTimeout(
                    f"all {self.capacity} entries stayed in use for {self.wait_seconds:g} s; try again later"
                )
            self._lock.wait(left)

    def _evict(self, keep: str | None = None) -> None:
        """Drop least recently used entries nobody holds (nor `keep`, just returned) beyond capacity."""
        for key in list(self._values):
            if len(self._values) <= self.capacity:
                return
            if key not in self._pins and key != keep:
                value = self._values.pop(key)
                if self._drop is not None:
                    self._drop(key, value)
