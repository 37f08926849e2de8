"""Which slot of a LoRA bank holds which LoRA set, and who is using it.

A request's LoRA set is written into a free slot the first time it is needed (at hot-load or first
use), without re-export, rebuild or refit. The request holds (pins) the slot until it ends, so no
other set can be written over it meanwhile: eviction and removal never alter or fail a request in
flight. Unheld slots stay filled for the next request of the same set and are reused least
recently used first. When every slot is held, a new set waits for one to be released (at most
`wait_seconds`, then `CacheFullTimeout`); it never evicts a held slot. Slot 0 is no LoRA and is
never handed out.
"""

from __future__ import annotations

from collections.abc import Callable

from clif_serve.lora.bank import LoraBank
from clif_serve.lora.cache import DEFAULT_WAIT_SECONDS, PinnedCache
from clif_serve.lora.weights import LoraWeights


class SlotTable:
    """LoRA set id -> bank slot, filled on first use, pinned by requests, least recently used reused."""

    def __init__(self, bank: LoraBank, wait_seconds: float = DEFAULT_WAIT_SECONDS):
        self.bank = bank
        self._free = list(range(bank.slots - 1, 0, -1))  # pop() hands out slot 1 first
        self._slots: PinnedCache[int] = PinnedCache(bank.slots - 1, drop=self._vacate, wait_seconds=wait_seconds)

    def acquire(self, lora: LoraWeights) -> int:
        """The slot holding `lora` (written there first if needed), pinned until `release(lora.set_id)`."""
        return self.acquire_id(lora.set_id, lambda: lora)

    def acquire_id(self, set_id: str, load: Callable[[], LoraWeights]) -> int:
        """Like `acquire` for a set known by id; `load()` gives its weights on a miss."""
        return self._slots.acquire(set_id, lambda: self._fill(load()))

    def release(self, set_id: str) -> None:
        """One holder of `set_id`'s slot is done (the slot may now be reused)."""
        self._slots.release(set_id)

    def slot_of(self, set_id: str) -> int:
        """The slot of a set a caller holds; KeyError when it is in none."""
        return self._slots.pinned(set_id)

    def resident(self) -> list[str]:
        """Set ids in the bank now, least recently used first."""
        return self._slots.keys()

    def _fill(self, lora: LoraWeights) -> int:
        slot = self._free.pop()
        try:
            self.bank.fill(slot, lora)
        except BaseException:
            self._free.append(slot)
            raise
        return slot

    def _vacate(self, _set_id: str, slot: int) -> None:
        self._free.append(slot)
