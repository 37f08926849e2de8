"""deploy/k8s/base/release.sh, run for real (bash, flock): the prepare Job's half and the replicas'
half of the one-time export. The export itself is not run here (about a minute and a half for
`tiny`); with no clif-serve on PATH, any attempt to export fails the run, so a prepare that
succeeds did not export."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy.conftest import K8S

SCRIPT = K8S / "base" / "release.sh"
SETTINGS = {
    "CLIF_RELEASE": "r1",
    "CLIF_MODEL": "tiny",
    "CLIF_RECIPE": "",
    "CLIF_BACKEND": "python",
    "CLIF_REPO_ARGS": "--pipeline-instances=4",
}


def environment(data: Path, **changes: str) -> dict[str, str]:
    # System tools only: no clif-serve, so nothing can be exported behind the test's back.
    return {
        "PATH": "/usr/bin:/bin",
        "CLIF_DATA": str(data),
        "CLIF_WAIT_SECONDS": "0.1",
        **SETTINGS,
        **changes,
    }


def run(command: str, data: Path, **changes: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        env=environment(data, **changes),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def half_prepared(tmp_path) -> Path:
    """A release whose prepare Job started (settings recorded) and failed at the export."""
    failed = run("prepare", tmp_path)
    assert failed.returncode == 127 and "clif-serve: command not found" in failed.stderr
    release = tmp_path / "releases" / "r1"
    assert (release / "settings").is_file() and not (release / "READY").exists()
    return release


def test_replicas_wait_until_the_release_is_ready(tmp_path, half_prepared):
    waiting = subprocess.Popen(
        ["bash", str(SCRIPT), "wait"], env=environment(tmp_path), stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1.0)
        assert waiting.poll() is None, "a replica started before its release was ready"
        (half_prepared / "READY").touch()  # the last thing prepare does
        assert waiting.wait(timeout=10) == 0
        assert "release r1 is ready" in waiting.stdout.read()
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()


def test_prepare_of_a_ready_release_exports_nothing(tmp_path, half_prepared):
    (half_prepared / "READY").touch()
    before = sorted(os.listdir(half_prepared))
    again = run("prepare", tmp_path)
    assert again.returncode == 0, again.stderr
    assert "release r1 is ready" in again.stdout and sorted(os.listdir(half_prepared)) == before


@pytest.mark.parametrize("command", ["prepare", "wait"])
def test_a_release_is_never_remade_or_served_with_other_settings(tmp_path, half_prepared, command):
    other = run(command, tmp_path, CLIF_BACKEND="onnxruntime")
    assert other.returncode == 1
    assert "release r1 was made with" in other.stderr and "choose a new CLIF_RELEASE" in other.stderr
    assert "backend=python" in (half_prepared / "settings").read_text()


def test_new_settings_go_to_a_new_release_beside_the_old(tmp_path, half_prepared):
    (half_prepared / "READY").touch()
    new = run("prepare", tmp_path, CLIF_RELEASE="r2", CLIF_BACKEND="onnxruntime")
    assert new.returncode == 127  # it went on to export r2 (no clif-serve here)
    assert "backend=onnxruntime" in (tmp_path / "releases" / "r2" / "settings").read_text()
    assert run("wait", tmp_path).returncode == 0  # r1 is untouched and still served


def test_prepare_clears_what_a_killed_export_left(tmp_path, half_prepared):
    leftover = half_prepared / ".export-staging-abc123"
    leftover.mkdir()
    run("prepare", tmp_path)
    assert not leftover.exists()


def test_unknown_command_is_refused(tmp_path):
    result = run("serve", tmp_path)
    assert result.returncode == 2 and "usage: release.sh prepare|wait" in result.stderr
