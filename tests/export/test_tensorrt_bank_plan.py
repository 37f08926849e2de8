"""`unet_bank` on TensorRT without tensorrt: which engine inputs stay resident (the bank, bound once),
their shapes and dtypes from the export's contract, the profiles, and the clear missing-package error."""

from __future__ import annotations

import importlib.util

import pytest

from clif_serve.contract.stages import LORA_SLOT, UNET_BANK
from clif_serve.errors import ClifServeError
from clif_serve.export.recipe import load_recipe
from clif_serve.export.tensorrt import TensorRTUnavailable, engine_stages, stage_profiles
from clif_serve.export.tensorrt_bank import TensorRTBankRunner, bank_binding_plan
from clif_serve.lora.bank import LoraBank
from clif_serve.lora.naming import bank_input_names


def test_the_bank_is_resident_at_the_contracts_shapes(tiny_bank_export):
    deployment = tiny_bank_export.deployment
    plan = bank_binding_plan(deployment)
    bank = LoraBank(deployment.spec, deployment.bank_slots, deployment.bank_rank)
    assert [t.name for t in plan.resident] == list(bank_input_names(deployment.spec))
    assert {t.name: t.shape for t in plan.resident} == {name: a.shape for name, a in bank.arrays.items()}
    assert {t.dtype for t in plan.resident} == {"float32"}
    assert all(t.shape[0] == deployment.bank_slots == 9 for t in plan.resident)
    assert plan.slot_input == LORA_SLOT and LORA_SLOT in plan.per_call
    assert not set(plan.per_call) & {t.name for t in plan.resident}, "the bank is never bound per call"
    assert plan.outputs == ("noise_pred",)


def test_profiles_and_engine_stages_cover_the_bank(tiny_bank_export, tiny_export):
    deployment = tiny_bank_export.deployment
    plan = bank_binding_plan(deployment)
    assert UNET_BANK in engine_stages(tiny_bank_export)
    recipe = load_recipe("tiny-bank")
    for profile in stage_profiles(tiny_bank_export, UNET_BANK, recipe):
        for tensor in plan.resident:
            assert profile[tensor.name] == (tensor.shape,) * 3, "one static shape"
        low, _, high = profile[LORA_SLOT]
        assert len(low) == 1 and low[0] <= high[0], "the slot index follows the batch"
    with pytest.raises(ClifServeError, match="no unet_bank"):
        bank_binding_plan(tiny_export.deployment)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_runner_without_tensorrt_is_a_clear_error(tiny_bank_export, tmp_path):
    with pytest.raises(TensorRTUnavailable, match="tensorrt"):
        TensorRTBankRunner(tmp_path / "model.plan", tiny_bank_export.deployment)
