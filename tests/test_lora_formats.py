"""LoRA files of other tools into packs and out to diffusers (images against diffusers: test_interop_parity)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file

from clif_serve.errors import PackError
from clif_serve.lora.formats import DIFFUSERS_METADATA, read_lora, write_diffusers_lora
from clif_serve.lora.math import lora_delta
from tests.helpers import random_lora


def test_peft_adapter_folder_carries_its_alpha_pattern(tmp_path, tiny_base):
    """`PeftModel.save_pretrained`: adapter_model.safetensors + adapter_config.json (alpha_pattern applies)."""
    unet = UNet2DConditionModel.from_pretrained(tiny_base.path / "unet")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        alpha_pattern={"attn2.to_q": 2}, init_lora_weights=False)
    model = get_peft_model(unet, config)
    model.save_pretrained(str(tmp_path))
    imported = read_lora(tmp_path, tiny_base.spec)
    assert imported.format == "peft" and imported.folded  # two alphas: one rank, scales folded into B
    layers = dict(model.base_model.model.named_modules())
    for module in tiny_base.spec.lora_targets:
        expected = layers[module].get_delta_weight("default")
        torch.testing.assert_close(lora_delta(imported.lora, module), expected, atol=1e-6, rtol=0)


def test_diffusers_export_round_trips_rank_and_alpha(tmp_path, tiny_base):
    lora = random_lora(tiny_base, rank=3, alpha=1.5, seed=4)
    path = write_diffusers_lora(lora, tmp_path / "joe-lora.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert all(key.startswith("unet.") for key in handle.keys())
        assert json.loads(handle.metadata()[DIFFUSERS_METADATA])["unet.lora_alpha"] == 1.5
    imported = read_lora(path, tiny_base.spec)
    assert (imported.format, imported.lora.rank, imported.lora.alpha, imported.folded) == ("diffusers", 3, 1.5, False)
    assert imported.lora.set_id == lora.set_id


def test_broken_kohya_files_are_refused_naming_the_key(tmp_path, tiny_base):
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 32)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(PackError, match=rf"^{name}.lora_up.weight: is missing"):
        read_lora(tmp_path / "half.safetensors", tiny_base.spec)
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 16), f"{name}.lora_up.weight": torch.zeros(32, 4)},
              str(tmp_path / "wide.safetensors"))
    with pytest.raises(PackError, match=rf"^{name}.lora_down.weight: maps 16->32 features, the base module maps 64->64"):
        read_lora(tmp_path / "wide.safetensors", tiny_base.spec)
    save_file({f"{name}.hada_w1_a": torch.zeros(4, 32)}, str(tmp_path / "loha.safetensors"))
    with pytest.raises(PackError, match=rf"^{name}.hada_w1_a: is not a kohya LoRA tensor"):
        read_lora(tmp_path / "loha.safetensors", tiny_base.spec)
