"""The export's memory estimate: an export that cannot fit fails at once, naming what it needs."""

from __future__ import annotations

import pytest

from clif_serve.cli import main
from clif_serve.export import memory
from clif_serve.export.memory import GIB, ExportMemoryError, check_export_memory, export_memory_need
from clif_serve.models.tiny import embedded_model_dir

# float32 bytes of full-size SD1.5's components (parameter counts of the public configs)
SD15 = {"unet": 4 * 859_520_964, "text_encoder": 4 * 123_060_480, "vae": 4 * 83_653_863}


# Peak RSS measured by benchmarks/full_size.py for `clif-serve export --recipe export/sd15-512.toml`.
SD15_MEASURED_PEAK_GIB = 7.67


def test_the_estimate_covers_what_was_measured_at_full_size():
    need, why = export_memory_need(SD15)
    assert SD15_MEASURED_PEAK_GIB * GIB < need < 1.5 * SD15_MEASURED_PEAK_GIB * GIB
    assert need >= memory.BASELINE + sum(SD15.values()), "at least the loaded model"
    merged, merged_why = export_memory_need(SD15, merged_lora=True)
    assert merged >= need + SD15["unet"] - memory.ACTIVATIONS and "LoRA-merged copy" in merged_why
    assert "GiB" in why


def test_an_export_that_cannot_fit_fails_at_once_naming_what_it_needs():
    folder = embedded_model_dir("tiny")
    need, _ = export_memory_need(memory.component_weight_bytes(folder))
    check_export_memory(folder, available=need + 1)
    with pytest.raises(ExportMemoryError) as refused:
        check_export_memory(folder, available=need - 1)
    message = str(refused.value)
    assert f"needs about {need / GIB:.1f} GiB" in message and "GiB are available" in message
    assert memory.SKIP_ENV in message


def test_the_cli_refuses_before_loading_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: type("vm", (), {"available": 1})())
    assert main(["export", "--model", "tiny", "--out", str(tmp_path / "out")]) == 2
    assert "needs about" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    check_export_memory(embedded_model_dir("tiny"), available=1)
