"""A local service in one call: export (or reuse an export), build the repository, start tritonserver.

Used by the demo and by `clif-serve bench` when no server URL is given. The server listens on free
loopback ports and keeps its concept store, repository and log under `workdir`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clif_serve.contract.folder import MANIFEST, ExportFolder, open_export
from clif_serve.errors import ModelFolderError
from clif_serve.export.exporter import export_model
from clif_serve.export.recipe import default_recipe_name
from clif_serve.models.loading import load_base_model
from clif_serve.models.spec import ModelSpec
from clif_serve.serving.launcher import Ports, TritonServer
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.repository import build_repository


@dataclass(frozen=True)
class LocalServer:
    """A running local server and what it serves."""

    server: TritonServer
    export: ExportFolder
    workdir: Path
    export_s: float
    ready_s: float

    @property
    def url(self) -> str:
        return self.server.grpc_url


def reusable_export(export_dir: Path, spec: ModelSpec, recipe: str | None = None) -> ExportFolder | None:
    """The export in `export_dir` if there is a complete one made by this clif-serve from the same base
    (and, when `recipe` is given, with the recipe of that name)."""
    if not (export_dir / MANIFEST).is_file():
        return None
    try:
        existing = open_export(export_dir)
    except ModelFolderError:  # incomplete, or made by another clif-serve version
        return None
    if recipe is not None and existing.manifest["recipe"].get("name") != recipe:
        return None
    return existing if existing.spec == spec else None


def prepare_export(model: str, export_dir: Path, recipe: str | None = None) -> ExportFolder:
    """The export of `model` with `recipe` (default: the model's) in `export_dir`: reused when it was
    made from the same base with that recipe, else (re)made."""
    base = load_base_model(model)
    recipe = recipe or default_recipe_name(model, base.spec)
    existing = reusable_export(export_dir, base.spec, recipe)
    if existing is not None:
        return existing
    return export_model(base, export_dir, recipe=recipe, overwrite=True)


@contextmanager
def local_server(
    model: str = "tiny",
    workdir: str | Path | None = None,
    options: RepoOptions | None = None,
    recipe: str | None = None,
) -> Iterator[LocalServer]:
    """Export `model` (with `recipe`, default the model's), build its repository and serve it until the
    `with` block ends."""
    with tempfile.TemporaryDirectory(prefix="clif-serve-local-") as scratch:
        work = Path(workdir or scratch)
        started = time.perf_counter()
        export = prepare_export(model, work / "export", recipe)
        export_s = time.perf_counter() - started
        repo = build_repository(export.root, work / "repo", options, overwrite=True)
        started = time.perf_counter()
        server = TritonServer(repo, Ports.free_on_loopback(), concept_store=work / "concepts", log_file=work / "server.log")
        with server:
            yield LocalServer(server, export, work, export_s, time.perf_counter() - started)
