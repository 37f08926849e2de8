"""The served LoRA bank path on CPU: the bank as OrtValues bound with IOBinding (`ResidentBank` in the
stage runner), bit-identical to feeding the bank's arrays to `session.run`, filled in place."""

from __future__ import annotations

import numpy as np
import pytest

from clif_serve.concepts.store import ConceptStore
from clif_serve.contract.stages import LORA_SLOT, UNET_BANK
from clif_serve.lora.bank import LoraBank
from clif_serve.lora.weights import LoraWeights
from clif_serve.runtime.resident_bank import ResidentBank
from clif_serve.serving.context import ModelContext
from clif_serve.serving.lora_bank import ServedBank
from clif_serve.serving.parameters import ModelParameters
from clif_serve.serving.stage_runner import StageRunner
from tests.helpers import random_lora


@pytest.fixture(scope="module")
def bank_runner(tiny_bank_export):
    deployment = tiny_bank_export.deployment
    signature = deployment.signature(UNET_BANK)
    resident = ResidentBank(deployment.spec, deployment.bank_slots, deployment.bank_rank)
    runner = StageRunner(
        tiny_bank_export.onnx_path(UNET_BANK), signature.input_names, signature.output_names, resident=resident.values
    )
    return resident, runner


def _feed(rng, slots) -> dict[str, np.ndarray]:
    batch = len(slots)
    return {
        "sample": rng.standard_normal((batch, 4, 32, 32), np.float32),
        "timestep": np.full(batch, 400.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, 32), np.float32),
        LORA_SLOT: np.asarray(slots, np.int64),
    }


def _lora(tiny_base, seed: int, rank: int) -> LoraWeights:
    """A LoRA set of realistic size (updates a fraction of the weights, as the bank tests use)."""
    lora = random_lora(tiny_base, rank=rank, seed=seed)
    return LoraWeights({k: v / 3 for k, v in lora.tensors.items()}, rank=lora.rank, alpha=lora.alpha)


def test_bound_bank_equals_the_fed_bank_bit_for_bit(bank_runner, tiny_base):
    resident, runner = bank_runner
    fed = LoraBank(tiny_base.spec, resident.bank.slots, resident.bank.rank)  # the previous path's arrays
    for slot, seed in ((1, 11), (2, 12)):
        resident.bank.fill(slot, _lora(tiny_base, seed, rank=2 + slot))
        fed.fill(slot, _lora(tiny_base, seed, rank=2 + slot))
    feed = _feed(np.random.default_rng(0), [0, 1, 2, 1])
    (bound,) = runner.run([feed])
    (expected,) = runner.session.run(["noise_pred"], {**feed, **fed.arrays})
    assert np.array_equal(bound["noise_pred"], expected)
    # The OrtValues ARE the bank: a fill shows in the bound input's memory without any copy call.
    name = next(iter(resident.values))
    assert np.array_equal(resident.values[name].numpy(), fed.arrays[name])


def test_refilled_slot_updates_the_bound_bank_in_place(bank_runner, tiny_base):
    resident, runner = bank_runner
    a, b = _lora(tiny_base, 21, rank=4), _lora(tiny_base, 22, rank=8)
    feed = _feed(np.random.default_rng(1), [3, 3])
    pointers = {name: value.data_ptr() for name, value in resident.values.items()}
    outputs = []
    for lora in (a, b, a):
        resident.bank.fill(3, lora)
        outputs.append(runner.run([feed])[0]["noise_pred"].copy())
    assert {name: value.data_ptr() for name, value in resident.values.items()} == pointers, "never reallocated"
    assert not np.allclose(outputs[0], outputs[1], atol=1e-4), "B changed the bound bank"
    assert np.array_equal(outputs[0], outputs[2]), "A -> B -> A gives A exactly"


def test_served_bank_runs_mixed_sets_as_each_alone(tiny_bank_export, tiny_base, tmp_path):
    store = ConceptStore(tmp_path / "store")
    sets = [_lora(tiny_base, 31, rank=2), _lora(tiny_base, 32, rank=6)]
    pins = [store.pin_lora(lora) for lora in sets]  # what each request's pipeline does first
    context = ModelContext(
        name=UNET_BANK,
        config={},
        parameters=ModelParameters(concept_store=str(tmp_path / "store")),
        version_dir=tiny_bank_export.root,
        repo_root=tmp_path,
    )
    served = ServedBank(context)
    signature = tiny_bank_export.deployment.signature(UNET_BANK)
    runner = StageRunner(
        tiny_bank_export.onnx_path(UNET_BANK), signature.input_names, signature.output_names, resident=served.values
    )
    rng = np.random.default_rng(2)
    feeds = [{k: v for k, v in _feed(rng, [0, 0]).items() if k != LORA_SLOT} for _ in range(3)]
    ids = [sets[0].set_id, sets[1].set_id, None]
    together = served.run(runner, feeds, ids)
    for feed, set_id, result in zip(feeds, ids, together, strict=True):
        (alone,) = served.run(runner, [feed], [set_id])
        assert np.array_equal(result["noise_pred"], alone["noise_pred"])
    assert not np.allclose(together[0]["noise_pred"], together[1]["noise_pred"], atol=1e-4)
    for pin in pins:
        pin.release()
