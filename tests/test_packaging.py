"""The wheel: built from a copy of the checkout, installed non-editable into a fresh venv, used from
outside the checkout (recipes and the model repository template must ship inside it)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_wheel_installs_and_exports_outside_the_checkout(tmp_path):
    source = tmp_path / "source"
    files = _run("git", "ls-files", "-z", cwd=ROOT).split("\0")
    for name in filter(None, files):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_symlink():
            target.symlink_to(os.readlink(ROOT / name))
        elif (ROOT / name).is_file():
            target.write_bytes((ROOT / name).read_bytes())
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), ".", cwd=source)
    (wheel,) = wheels.glob("clif_serve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "clif_serve/export/recipes/tiny.toml" in names
    assert "clif_serve/serving/model_repo/stage/python.pbtxt" in names
    assert "clif_serve/serving/model_repo/clif_pipeline/model.py" in names

    # A fresh venv with only the wheel; its dependencies (torch ...) come from this environment's
    # site-packages through a .pth file (a path line: the editable install's own .pth is not read).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(_run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel), cwd=tmp_path)
    where = _run(str(python), "-c", "import clif_serve; print(clif_serve.__file__)", cwd=tmp_path).strip()
    assert where.startswith(str(site)), f"clif_serve imported from {where}, not from the wheel"

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    cli = str(env_dir / "bin" / "clif-serve")
    _run(cli, "export", "--model", "tiny", "--out", "export", cwd=work, env=env)
    out = _run(cli, "repo", "--export", "export", "--out", "repo", cwd=work, env=env)
    assert Path(out.strip()) == (work / "repo").resolve()
    assert (work / "repo" / "clif_pipeline" / "1" / "model.py").is_file()
    assert (work / "repo" / "unet" / "config.pbtxt").is_file()
