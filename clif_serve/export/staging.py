"""The staging folder of an export: where stages are written and checked before the folder is moved into place.

An export into `OUT` writes into `.OUT.partial/` beside it, holding an exclusive lock on
`.OUT.partial/.lock` (a second export into the same `OUT` is refused while one runs; a killed
export's lock dies with its process). A stage's record `<stage>/manifest.json` is written only
once the stage passed its parity check, so after a failure (a stage refused, the process killed)
the next export with the same inputs (`resume.json`: the deployment, the recipe, the base model
folder's weight files by path, size and modification time) keeps the stages that passed and redoes
only the others. Anything else left beside `OUT` by an earlier export (a partial folder made from
other inputs, the `.OUT-staging-XXXXXXXX` folders older clif-serve versions staged in, the
`.OUT-old-XXXXXXXX` trash of a replaced export, stage folders without a record) is removed by the
next export into `OUT`. Only when every stage passed is the
folder moved into place, so `OUT` never holds a half-written export.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from clif_serve.contract.folder import ONNX_FILE, STAGE_MANIFEST
from clif_serve.errors import InputError

RESUME_FILE = "resume.json"
LOCK_FILE = ".lock"


def weight_files_state(folder: Path) -> list[list]:
    """Path, size and modification time of every weight file under a model folder (nothing is read)."""
    files = sorted(p for pattern in ("*.safetensors", "*.bin") for p in folder.rglob(pattern))
    return [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


class ExportStaging:
    """`.OUT.partial/` under its lock; use as a context manager."""

    def __init__(self, out: Path, resume_key: dict):
        self.out = out
        self.root = out.parent / f".{out.name}.partial"
        self.resume_key = json.loads(json.dumps(resume_key))  # as it reads back from resume.json
        self._lock = None

    def __enter__(self) -> ExportStaging:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / LOCK_FILE, "a")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise InputError("out", f"another export into {self.out} is running (it holds {self.root / LOCK_FILE})") from None
        self._remove_leftovers()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock

    def _remove_leftovers(self) -> None:
        leftover = re.compile(rf"\.{re.escape(self.out.name)}-(?:staging|old)-[a-z0-9_]{{8}}")
        for path in self.out.parent.iterdir():
            if leftover.fullmatch(path.name) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        resume = self.root / RESUME_FILE
        same_inputs = resume.is_file() and json.loads(resume.read_text()) == self.resume_key
        for path in self.root.iterdir():
            if path.name == LOCK_FILE:
                continue
            if not (same_inputs and (path.name == RESUME_FILE or (path / STAGE_MANIFEST).is_file())):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        resume.write_text(json.dumps(self.resume_key, indent=1))

    def passed(self, stage: str) -> dict | None:
        """The record of a stage that passed in an earlier, interrupted export with the same inputs."""
        record = self.root / stage / STAGE_MANIFEST
        if not (record.is_file() and (self.root / stage / ONNX_FILE).is_file()):
            return None
        return json.loads(record.read_text())

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def fresh_stage_dir(self, stage: str) -> Path:
        """An empty folder for a stage that is (re)done."""
        folder = self.stage_dir(stage)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        return folder

    def mark_passed(self, stage: str, record: dict) -> None:
        """Write the stage's record: from now on the stage counts as done."""
        (self.stage_dir(stage) / STAGE_MANIFEST).write_text(json.dumps(record, indent=1))

    def move_into_place(self) -> None:
        """Replace `out` (if any) by the staged export; the old folder goes only once the new one is in place."""
        (self.root / RESUME_FILE).unlink()
        (self.root / LOCK_FILE).unlink()  # still held through the open file until __exit__
        trash = None
        if self.out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{self.out.name}-old-", dir=self.out.parent))
            os.replace(self.out, trash / "old")
        os.replace(self.root, self.out)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
