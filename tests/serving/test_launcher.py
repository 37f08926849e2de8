"""Finding tritonserver: PATH first, else the copy prepared from nvidia-pytriton, else a clear error."""

from __future__ import annotations

import os
import stat
import sys
import sysconfig
from pathlib import Path

import pytest

from clif_serve.serving.launcher import (
    Ports,
    ServerNotFoundError,
    ServerStartError,
    TritonServer,
    find_tritonserver,
    pytriton_dist,
)


def test_no_server_anywhere_is_a_clear_error():
    with pytest.raises(ServerNotFoundError, match="no tritonserver found.*nvidia-pytriton"):
        find_tritonserver(search_path="", use_pytriton=False)


def test_a_tritonserver_on_path_wins(tmp_path):
    binary = tmp_path / "tritonserver"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    install = find_tritonserver(search_path=str(tmp_path))
    assert install.binary == binary and install.backend_dir is None and install.workdir is None
    assert install.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_pytriton_copy_is_prepared_as_environment_md_says():
    assert pytriton_dist() is not None, "nvidia-pytriton is a test dependency"
    install = find_tritonserver(search_path="")
    try:
        assert os.access(install.binary, os.X_OK)
        assert (install.backend_dir / "python" / "triton_python_backend_stub").is_file()
        assert (install.backend_dir / "python" / "libtriton_python.so").is_file()
        libs = install.env["LD_LIBRARY_PATH"].split(os.pathsep)
        assert libs[0] == sysconfig.get_config_var("LIBDIR") and libs[1].endswith("nvidia_pytriton.libs")
    finally:
        import shutil

        shutil.rmtree(install.workdir)


def test_missing_repository_is_refused(tmp_path):
    with pytest.raises(ServerStartError, match="no such model repository"):
        TritonServer(tmp_path / "nowhere", Ports.free_on_loopback())


def test_a_server_that_cannot_load_its_models_reports_why(tmp_path):
    broken = tmp_path / "repo" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n')  # no model.py, no tensors
    server = TritonServer(tmp_path / "repo", Ports.free_on_loopback(), log_file=tmp_path / "server.log")
    with pytest.raises(ServerStartError, match="exited with code") as failed:
        server.start(timeout_s=60)
    assert "broken" in str(failed.value)
    assert server.process is None
