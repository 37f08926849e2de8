"""Benchmark scripts write their results as <stem>.json and <stem>.md through one helper."""

from __future__ import annotations

import json

from clif_serve.bench.results import write_results


def test_results_are_written_as_json_and_markdown_in_a_new_folder(tmp_path):
    json_path, markdown_path = write_results({"failed": 0, "p50": [1.5]}, "# soak\n", tmp_path / "new", "soak")
    assert (json_path.name, markdown_path.name) == ("soak.json", "soak.md")
    assert json.loads(json_path.read_text()) == {"failed": 0, "p50": [1.5]}
    assert markdown_path.read_text() == "# soak\n"


def test_a_script_keeps_its_own_json_indent(tmp_path):
    report = {"rows": [{"pairs": 500}], "environment": {"cpu": "x"}}
    json_path, _ = write_results(report, "", tmp_path, "lora_bank", indent=1)
    assert json_path.read_text() == json.dumps(report, indent=1) != json.dumps(report, indent=2)
