"""Static checks that run with the suite: ruff over the code, and no hub downloads anywhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUB_CALL = re.compile(r"from_pretrained\(\s*[\"'][A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+[\"']")


def test_ruff_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "clif_serve", "tests", "benchmarks", "model_repo"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_loads_from_a_model_hub():
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for folder in ("clif_serve", "benchmarks", "model_repo")
        for path in (ROOT / folder).rglob("*.py")
        for match in HUB_CALL.finditer(path.read_text())
    ]
    assert not offenders, offenders
