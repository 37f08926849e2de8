"""The concept store: a folder of pack files that a server writes on hot-load (read back by
`clif_serve.serving.concept_sync.StoreSync`).

Writes are atomic (temporary file + rename in the same folder), so a crash never leaves a half
written pack, a restart sees exactly the concepts that were accepted, and replicas sharing the
folder see the same set.
"""

from __future__ import annotations

from pathlib import Path

from clif_serve.concepts.pack import ConceptPack, check_name, write_pack
from clif_serve.errors import PackError

PACK_SUFFIX = ".safetensors"


class ConceptStore:
    """Pack files named `<concept name>.safetensors` in one folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path_of(self, name: str) -> Path:
        """Where the pack of concept `name` lives (the name is checked, so no path tricks)."""
        check_name(name)
        return self.folder / f"{name}{PACK_SUFFIX}"

    def save(self, pack: ConceptPack) -> Path:
        """Write (or overwrite) a concept's pack atomically."""
        return write_pack(pack, self.path_of(pack.name))

    def delete(self, name: str) -> None:
        """Remove a concept's pack file; a missing file is an error naming the concept."""
        path = self.path_of(name)
        if not path.is_file():
            raise PackError("name", f"no concept named {name!r} in the store")
        path.unlink()
