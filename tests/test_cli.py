"""The clif-serve command line, run in process through its entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clif_serve.cli import build_parser, main
from clif_serve.concepts.pack import read_pack
from clif_serve.lora.formats import read_lora, write_diffusers_lora


def _subcommands(parser):
    for action in parser._subparsers._group_actions:
        yield from action.choices.items()


def _all_commands():
    commands = []
    for name, sub in _subcommands(build_parser()):
        commands.append([name])
        if sub._subparsers is not None:
            commands += [[name, child] for child, _ in _subcommands(sub)]
    return commands


@pytest.mark.parametrize("command", _all_commands(), ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "usage: clif-serve" in text and "-h, --help" in text


def test_new_inspect_generate(tmp_path, capsys):
    for name, word in (("a", "dog"), ("b", "cat")):
        assert main(["concepts", "new", name, "--model", "tiny", "--init-from", word, "-o", str(tmp_path / f"{name}.safetensors")]) == 0
    assert main(["concepts", "inspect", str(tmp_path / "a.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert "trigger" in shown and "<a>" in shown and "class_word" in shown and "dog" in shown
    output = tmp_path / "out.png"
    code = main(
        ["generate", "a photo of <a> and <b>", "--model", "tiny", "--concept", str(tmp_path / "a.safetensors"),
         "--concept", str(tmp_path / "b.safetensors"), "--steps", "4", "--seed", "0", "-o", str(output)]
    )
    assert code == 0
    image = np.asarray(Image.open(output))
    assert image.shape == (64, 64, 3) and image.std() > 0


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["concepts", "new", "a", "--init-from", "xyzzyq", "-o", str(tmp_path / "a.safetensors")]) == 2
    assert "class_word: 'xyzzyq' is not a single token" in capsys.readouterr().err
    assert main(["generate", "<nobody>", "--steps", "2", "-o", str(tmp_path / "x.png")]) == 2
    assert "unknown concept <nobody>" in capsys.readouterr().err
    assert main(["concepts", "inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_outputs_are_not_replaced_without_force(tmp_path, capsys):
    pack = tmp_path / "a.safetensors"
    new = ["concepts", "new", "a", "--init-from", "dog", "-o", str(pack)]
    assert main(new) == 0
    assert main(new) == 2
    assert f"output: {pack} already exists (pass --force to replace it)" in capsys.readouterr().err
    assert main([*new, "--force"]) == 0
    assert main(["concepts", "export", str(pack), "-o", str(pack)]) == 2
    assert main(["concepts", "import", "--embedding", str(pack), "-o", str(pack)]) == 2


def test_inspect_json_is_real_json(tmp_path, capsys):
    pack = tmp_path / "a.safetensors"
    assert main(["concepts", "new", "a", "--init-from", "dog", "--num-tokens", "3", "-o", str(pack)]) == 0
    capsys.readouterr()
    assert main(["concepts", "inspect", str(pack), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["tokens"] == ["<a_0>", "<a_1>", "<a_2>"] and shown["text_encoders"] == ["text_encoder"]
    assert shown["embedding_shapes"] == {"text_encoder": [3, 32]} and shown["lora"] is None


def test_import_a_lora_into_a_pack_set_and_export_it(tmp_path, tiny_base, capsys):
    from tests.helpers import random_lora

    lora = write_diffusers_lora(random_lora(tiny_base, rank=2, alpha=4.0), tmp_path / "trained" / "pytorch_lora_weights.safetensors")
    for name in ("a", "b"):
        assert main(["concepts", "new", name, "--init-from", "dog", "-o", str(tmp_path / f"{name}.safetensors")]) == 0
    code = main(["concepts", "import", "--lora", str(lora.parent), "--pack", str(tmp_path / "a.safetensors"),
                 "--pack", str(tmp_path / "b.safetensors"), "-o", str(tmp_path / "set")])
    assert code == 0
    assert "diffusers LoRA: 32 modules, rank 2, alpha 4" in capsys.readouterr().out
    packs = [read_pack(tmp_path / "set" / f"{name}.safetensors") for name in ("a", "b")]
    assert packs[0].lora.set_id == packs[1].lora.set_id
    out = tmp_path / "out"
    assert main(["concepts", "export", str(tmp_path / "set" / "a.safetensors"), "-o", str(out / "a.safetensors"),
                 "--lora", str(out / "a-lora.safetensors")]) == 0
    assert read_lora(out / "a-lora.safetensors", tiny_base.spec).lora.set_id == packs[0].lora.set_id
    assert main(["concepts", "import", "--embedding", str(out / "a.safetensors"), "--lora", str(out / "a-lora.safetensors"),
                 "--name", "c", "-o", str(tmp_path / "c.safetensors")]) == 0
    assert read_pack(tmp_path / "c.safetensors").lora.set_id == packs[0].lora.set_id


def test_import_sdxl_from_a_training_folder_or_hint_at_the_second_file(tmp_path, capsys):
    folder = tmp_path / "textual_inversion_cat_sdxl"
    folder.mkdir()
    for index, name in enumerate(("learned_embeds.safetensors", "learned_embeds_2.safetensors")):
        save_file({"<cat-toy>": torch.randn(1, 32, generator=torch.Generator().manual_seed(index))}, str(folder / name))
    assert main(["concepts", "import", "--model", "tiny-xl", "--embedding", str(folder), "-o", str(tmp_path / "cat.safetensors")]) == 0
    assert read_pack(tmp_path / "cat.safetensors").name == "cat-toy"
    code = main(["concepts", "import", "--model", "tiny-xl", "--embedding", str(folder / "learned_embeds.safetensors"),
                 "-o", str(tmp_path / "half.safetensors")])
    assert code == 2
    assert "learned_embeds_2.safetensors is next to it" in capsys.readouterr().err
