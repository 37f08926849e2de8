"""The LoRA bank's slot table: fill on first use, least-recently-used reuse, pinning, waiting when full."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from clif_serve.errors import PackError
from clif_serve.lora.bank import LoraBank
from clif_serve.lora.cache import CacheFullTimeout
from clif_serve.lora.naming import bank_module
from clif_serve.lora.slots import SlotTable
from tests.helpers import random_lora


@pytest.fixture(scope="module")
def loras(tiny_base):
    return [random_lora(tiny_base, rank=2 + seed % 3, alpha=3.0, seed=40 + seed, modules=8 + seed) for seed in range(8)]


def _holds(bank: LoraBank, slot: int, lora) -> bool:
    """Whether `slot` holds exactly `lora` (scaled B, zero padding, zeros for modules it does not touch)."""
    expected = LoraBank(bank.spec, bank.slots, bank.rank)
    expected.fill(slot, lora)
    return all(np.array_equal(bank.arrays[name][slot], expected.arrays[name][slot]) for name in bank.arrays)


def test_fill_pads_rank_scales_b_and_keeps_slot_zero_empty(tiny_base, loras):
    bank = LoraBank(tiny_base.spec, slots=3, rank=4)
    lora = loras[0]  # rank 2, alpha 3: B is stored times 1.5
    bank.fill(2, lora)
    for name, array in bank.arrays.items():
        module, key = bank_module(name)
        assert not array[0].any() and not array[1].any()
        if key not in lora.tensors:
            assert not array[2].any(), name
        elif name.endswith("A"):
            assert np.array_equal(array[2, :2], lora.tensors[key].numpy()) and not array[2, 2:].any()
        else:
            assert np.allclose(array[2, :, :2], lora.tensors[key].numpy() * 1.5) and not array[2, :, 2:].any()
    with pytest.raises(ValueError, match="slot 0"):
        bank.fill(0, lora)
    with pytest.raises(PackError, match="lora_rank"):
        LoraBank(tiny_base.spec, slots=2, rank=1).fill(1, lora)
    assert bank.nbytes_per_slot == sum(4 * 4 * (i + o) for i, o in tiny_base.spec.lora_targets.values())


def test_slots_fill_once_and_are_reused_least_recently_used_first(tiny_base, loras):
    table = SlotTable(LoraBank(tiny_base.spec, slots=4, rank=4))  # three sets at once
    first = [table.acquire(lora) for lora in loras[:3]]
    assert first == [1, 2, 3]
    assert table.acquire(loras[0]) == 1, "a resident set keeps its slot"
    for lora in loras[:3]:
        table.release(lora.set_id)
    table.release(loras[0].set_id)
    # loras[1] is the least recently used now: its slot goes to the new set
    assert table.acquire(loras[3]) == 2
    assert table.resident() == [loras[2].set_id, loras[0].set_id, loras[3].set_id]
    assert _holds(table.bank, 2, loras[3]) and _holds(table.bank, 1, loras[0])


def test_a_held_slot_is_never_taken_and_a_full_table_waits(tiny_base, loras):
    table = SlotTable(LoraBank(tiny_base.spec, slots=3, rank=4), wait_seconds=5.0)
    held = [table.acquire(lora) for lora in loras[:2]]
    got = {}

    def late():
        got["slot"] = table.acquire(loras[2])

    waiter = threading.Thread(target=late)
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive() and "slot" not in got, "every slot is held: the third set waits"
    assert _holds(table.bank, held[0], loras[0]) and _holds(table.bank, held[1], loras[1])
    table.release(loras[1].set_id)
    waiter.join(timeout=5)
    assert got["slot"] == held[1] and _holds(table.bank, held[1], loras[2])
    assert _holds(table.bank, held[0], loras[0]), "the held slot was not touched"


def test_waiting_ends_with_a_clear_error_only_after_the_timeout(tiny_base, loras):
    table = SlotTable(LoraBank(tiny_base.spec, slots=2, rank=4), wait_seconds=0.2)
    table.acquire(loras[0])
    started = time.monotonic()
    with pytest.raises(CacheFullTimeout, match="stayed in use for 0.2 s"):
        table.acquire(loras[1])
    assert time.monotonic() - started >= 0.2
    assert table.resident() == [loras[0].set_id] and _holds(table.bank, 1, loras[0])


def test_concurrent_requests_always_see_their_own_set(tiny_base, loras):
    """8 threads x 8 sets over 3 slots: while a request holds its slot, the slot holds its set."""
    table = SlotTable(LoraBank(tiny_base.spec, slots=4, rank=4), wait_seconds=30.0)
    errors = []

    def client(index: int):
        for round_ in range(6):
            lora = loras[(index + round_) % len(loras)]
            slot = table.acquire(lora)
            try:
                time.sleep(0.002)
                if not _holds(table.bank, slot, lora):
                    errors.append((index, round_, slot))
            finally:
                table.release(lora.set_id)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(table.resident()) == 3
