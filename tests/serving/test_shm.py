"""Shared-memory regions per server: a region prefix and an owner lock; stale ones go, live ones stay.

(On a real tritonserver killed with -9: test_security.py::test_kill_9_during_hot_loads.)
"""

from __future__ import annotations

import subprocess
import sys

from clif_serve.serving.shm import claim_regions, remove_stale_regions

HOLD = "import sys; sys.stdin.readline()"


def test_regions_of_a_live_server_stay_and_those_of_a_dead_one_go(tmp_path):
    other = tmp_path / "triton_python_backend_shm_region_1234"  # not started by clif-serve: never touched
    other.write_bytes(b"x")
    claim = claim_regions(tmp_path)
    region = tmp_path / f"{claim.prefix}3f2a"
    region.write_bytes(b"\0" * 64)
    # The server process inherits the owner lock; here a child stands in for it.
    server = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, pass_fds=(claim.fd,))
    claim.close()
    try:
        assert remove_stale_regions(tmp_path) == []
        assert region.exists()
    finally:
        server.communicate(b"\n", timeout=30)
    removed = remove_stale_regions(tmp_path)
    assert sorted(path.name for path in removed) == sorted([region.name, f"clif-serve-{claim.token}.owner"])
    assert [path.name for path in tmp_path.iterdir()] == [other.name]


def test_a_claim_is_unique_and_owned_before_it_has_a_name(tmp_path):
    first, second = claim_regions(tmp_path), claim_regions(tmp_path)
    try:
        assert first.prefix != second.prefix and first.prefix.startswith("clif-serve-")
        assert remove_stale_regions(tmp_path) == []  # both held by this process
        assert first.backend_option() == f"--backend-config=python,shm-region-prefix-name={first.prefix}"
    finally:
        first.close()
        second.close()
    assert len(remove_stale_regions(tmp_path)) == 2
    assert claim_regions(tmp_path / "absent") is None
