"""Import from and export to textual-inversion files (layouts; images against diffusers: test_interop_parity)."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from clif_serve.concepts.textual_inversion import export_textual_inversion, import_textual_inversion
from clif_serve.errors import PackError
from tests.helpers import random_pack


def test_token_layout_round_trip(tmp_path, tiny_base):
    pack = random_pack(tiny_base, "joe", seed=4)
    (path,) = export_textual_inversion(pack, tmp_path / "joe.safetensors")
    assert list(load_file(str(path))) == ["<joe>"]
    imported = import_textual_inversion(path, tiny_base.spec, class_word="person")
    assert imported.name == "joe" and imported.trigger == "<joe>" and imported.class_word == "person"
    assert torch.equal(imported.embeddings["text_encoder"], pack.embeddings["text_encoder"])


def test_emb_params_layout_round_trip(tmp_path, tiny_base):
    pack = random_pack(tiny_base, "rex", seed=5, num_tokens=3)
    (path,) = export_textual_inversion(pack, tmp_path / "rex.safetensors", layout="emb_params")
    assert list(load_file(str(path))) == ["emb_params"]
    imported = import_textual_inversion(path, tiny_base.spec)
    assert imported.name == "rex" and imported.num_tokens == 3
    assert torch.equal(imported.embeddings["text_encoder"], pack.embeddings["text_encoder"])


def test_diffusers_bin_file_is_read_without_pickle_code(tmp_path, tiny_base):
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-toy>": torch.randn(32)}, path)
    imported = import_textual_inversion(path, tiny_base.spec)
    assert imported.name == "cat-toy" and imported.num_tokens == 1


@pytest.mark.parametrize("layout", ["clip", "token"])
def test_sdxl_layouts_round_trip(layout, tmp_path, tiny_xl_base):
    pack = random_pack(tiny_xl_base, "ann", seed=6)
    paths = export_textual_inversion(pack, tmp_path / "ann.safetensors", layout=layout)
    if layout == "clip":
        assert sorted(load_file(str(paths[0]))) == ["clip_g", "clip_l"]
    else:
        assert [path.name for path in paths] == ["ann.safetensors", "ann_2.safetensors"]
        assert all(list(load_file(str(path))) == ["<ann>"] for path in paths)
    imported = import_textual_inversion(paths, tiny_xl_base.spec)
    for encoder in ("text_encoder", "text_encoder_2"):
        assert torch.equal(imported.embeddings[encoder], pack.embeddings[encoder])


def test_one_table_for_sdxl_names_the_second_file(tmp_path, tiny_xl_base):
    pack = random_pack(tiny_xl_base, "ann", seed=6)
    first, _ = export_textual_inversion(pack, tmp_path / "learned_embeds.safetensors", layout="token")
    with pytest.raises(PackError, match=r"^embedding: .*learned_embeds_2.safetensors.*learned_embeds_2.safetensors is next to it"):
        import_textual_inversion(first, tiny_xl_base.spec)


def test_sdxl_table_for_sd15_and_wrong_layouts_are_refused(tmp_path, tiny_base, tiny_xl_base):
    (clip,) = export_textual_inversion(random_pack(tiny_xl_base, "x"), tmp_path / "x.safetensors")
    with pytest.raises(PackError, match="the base model has 1"):
        import_textual_inversion(clip, tiny_base.spec)
    with pytest.raises(PackError, match=r"^layout: clip cannot hold an SD1.5 pack"):
        export_textual_inversion(random_pack(tiny_base, "y"), tmp_path / "y.safetensors", layout="clip")


def test_unknown_layout_and_empty_folder_are_refused(tmp_path, tiny_base):
    path = tmp_path / "two.safetensors"
    save_file({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, str(path))
    with pytest.raises(PackError, match="not a textual-inversion layout clif-serve knows"):
        import_textual_inversion(path, tiny_base.spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackError, match="holds none of learned_embeds.safetensors"):
        import_textual_inversion(tmp_path / "empty", tiny_base.spec)


def test_a1111_name_that_is_no_concept_name_asks_for_one(tmp_path, tiny_base):
    torch.save({"string_to_param": {"*": torch.randn(2, 32)}, "name": "my style"}, tmp_path / "style.pt")
    with pytest.raises(PackError, match=r"^name: 'my style' \(from style.pt\) is not a valid concept name"):
        import_textual_inversion(tmp_path / "style.pt", tiny_base.spec)
    assert import_textual_inversion(tmp_path / "style.pt", tiny_base.spec, name="my-style").num_tokens == 2


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_in_one_line_without_running_it(tmp_path, tiny_base):
    marker = tmp_path / "ran"
    torch.save({"<x>": torch.zeros(32), "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(PackError) as refused:
        import_textual_inversion(tmp_path / "evil.pt", tiny_base.spec)
    message = str(refused.value)
    assert "\n" not in message and "weights_only" not in message and "system" in message
    assert message.startswith("embedding: evil.pt is a pickle that asks to load")
    assert not marker.exists()
