"""The clif-serve command line, run in process through its entry point."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clif_serve.cli import build_parser, main


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
