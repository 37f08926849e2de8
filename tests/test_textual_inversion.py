"""Import from and export to diffusers textual-inversion files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from clif_serve.concepts.textual_inversion import export_textual_inversion, import_textual_inversion
from clif_serve.errors import PackError
from tests.helpers import random_pack


def test_token_layout_round_trip(tmp_path, tiny_base):
    pack = random_pack(tiny_base, "joe", seed=4)
    path = export_textual_inversion(pack, tmp_path / "joe.safetensors")
    assert list(load_file(str(path))) == ["<joe>"]
    imported = import_textual_inversion(path, tiny_base.spec, class_word="person")
    assert imported.name == "joe" and imported.trigger == "<joe>" and imported.class_word == "person"
    assert torch.equal(imported.embeddings["text_encoder"], pack.embeddings["text_encoder"])


def test_emb_params_layout_round_trip(tmp_path, tiny_base):
    pack = random_pack(tiny_base, "rex", seed=5, num_tokens=3)
    path = export_textual_inversion(pack, tmp_path / "rex.safetensors", layout="emb_params")
    assert list(load_file(str(path))) == ["emb_params"]
    imported = import_textual_inversion(path, tiny_base.spec)
    assert imported.name == "rex" and imported.num_tokens == 3
    assert torch.equal(imported.embeddings["text_encoder"], pack.embeddings["text_encoder"])


def test_diffusers_bin_file_is_read_without_pickle_code(tmp_path, tiny_base):
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-toy>": torch.randn(32)}, path)
    imported = import_textual_inversion(path, tiny_base.spec)
    assert imported.name == "cat-toy" and imported.num_tokens == 1


def test_sdxl_clip_l_clip_g_layout(tmp_path, tiny_xl_base):
    pack = random_pack(tiny_xl_base, "ann", seed=6)
    path = export_textual_inversion(pack, tmp_path / "ann.safetensors")
    assert sorted(load_file(str(path))) == ["clip_g", "clip_l"]
    imported = import_textual_inversion(path, tiny_xl_base.spec)
    for encoder in ("text_encoder", "text_encoder_2"):
        assert torch.equal(imported.embeddings[encoder], pack.embeddings[encoder])


def test_single_table_for_sdxl_is_refused(tmp_path, tiny_base, tiny_xl_base):
    path = export_textual_inversion(random_pack(tiny_base, "x"), tmp_path / "x.safetensors")
    with pytest.raises(PackError, match="the base model has 2"):
        import_textual_inversion(path, tiny_xl_base.spec)


def test_unknown_layout_is_refused(tmp_path, tiny_base):
    path = tmp_path / "two.safetensors"
    save_file({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, str(path))
    with pytest.raises(PackError, match="expected one"):
        import_textual_inversion(path, tiny_base.spec)
