"""kill -9 of a writer at several points of a hot-load (and of a removal), then a restart of the store.

A child process saves (or deletes) a pack through `ConceptStore`, stops itself (SIGSTOP) at one
point of the write, and is killed with SIGKILL there. Opening the store again (what a restarted
server does) must leave: no partial pack, no temporary file, a `.version` that is a counter, every
pack file complete, and a retried add that succeeds (unchanged when the first one had committed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clif_serve.concepts.pack import pack_to_bytes, read_pack, write_pack
from clif_serve.concepts.store import ConceptStore
from tests.serving.test_concept_sync import control_for

# The child: patch the file operations of the store's writes to stop at POINT, then do ACTION.
CHILD = r"""
import os, signal, sys
store_dir, point, action, pack_file = sys.argv[1:5]
from clif_serve.concepts.pack import read_pack
from clif_serve.concepts.store import ConceptStore

def stop():
    os.kill(os.getpid(), signal.SIGSTOP)

real_replace, real_fdopen, real_unlink = os.replace, os.fdopen, os.unlink

def replace(src, dst, *args, **kwargs):
    name = os.path.basename(str(dst))
    if point == f"before-rename:{name}":
        stop()
    real_replace(src, dst, *args, **kwargs)
    if point == f"after-rename:{name}":
        stop()

class HalfWriter:
    def __init__(self, handle):
        self.handle = handle
    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        stop()
    def __getattr__(self, name):
        return getattr(self.handle, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)

def fdopen(fd, *args, **kwargs):
    handle = real_fdopen(fd, *args, **kwargs)
    return HalfWriter(handle) if point == "mid-write" else handle

os.replace, os.fdopen = replace, fdopen
store = ConceptStore(store_dir)
if action == "save":
    store.save(read_pack(pack_file))
else:
    from pathlib import Path
    real_path_unlink = Path.unlink
    def path_unlink(self, *args, **kwargs):
        real_path_unlink(self, *args, **kwargs)
        if point == f"after-unlink:{self.name}":
            stop()
    Path.unlink = path_unlink
    store.delete(action.split(":", 1)[1])
print("finished without stopping", flush=True)
"""


def _kill_at(store: Path, point: str, action: str, pack_file: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), point, action, str(pack_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            pid, status = os.waitpid(child.pid, os.WUNTRACED | os.WNOHANG)
            if pid and os.WIFSTOPPED(status):
                break
            if pid:
                raise AssertionError(f"the writer ended before {point}: {child.stdout.read().decode()}")
            time.sleep(0.05)
        else:
            raise AssertionError(f"the writer never reached {point}")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)


def _check_restarted(store: Path, expected: dict[str, object]) -> None:
    """The store as a restarted server opens it: tidy, every pack whole, a counter as version."""
    opened = ConceptStore(store)
    names = sorted(path.name for path in store.iterdir())
    assert all(not name.startswith(".") or name in (".version", ".lock") for name in names), names
    assert opened.version().isdigit()
    found = {path.stem: read_pack(path) for path in store.glob("*.safetensors")}  # raises on a partial pack
    assert sorted(found) == sorted(expected), (names, expected)
    for name, pack in expected.items():
        assert found[name].manifest() == pack.manifest()


POINTS = [
    ("mid-write", False),  # the pack's temporary file half written
    ("after-rename:kim.safetensors", True),  # in place, the version not yet bumped; the client got no answer
    ("before-rename:.version", True),  # the new version written, not yet in place
]


@pytest.mark.parametrize(("point", "committed"), POINTS, ids=[point for point, _ in POINTS])
def test_kill_during_a_hot_load(point, committed, tiny_base, packs, tmp_path):
    store = tmp_path / "store"
    control = control_for(store, tiny_base.spec)
    control.add(pack_to_bytes(packs["joe"]))
    version = ConceptStore(store).version()
    pack_file = write_pack(packs["kim"], tmp_path / "kim.safetensors")
    _kill_at(store, point, "save", pack_file)
    expected = {"joe": packs["joe"], **({"kim": packs["kim"]} if committed else {})}
    _check_restarted(store, expected)
    restarted = control_for(store, tiny_base.spec)
    if not committed:
        assert ConceptStore(store).version() == version
    retry = restarted.handle("add", pack=pack_to_bytes(packs["kim"]))  # the client retries its add
    assert retry.changed is not committed and [c.name for c in retry.concepts] == ["joe", "kim"]
    _check_restarted(store, {"joe": packs["joe"], "kim": packs["kim"]})


def test_kill_during_a_removal(tiny_base, packs, tmp_path):
    store = tmp_path / "store"
    control = control_for(store, tiny_base.spec)
    for name in ("joe", "kim"):
        control.add(pack_to_bytes(packs[name]))
    _kill_at(store, "after-unlink:kim.safetensors", "delete:kim", tmp_path / "unused")
    _check_restarted(store, {"joe": packs["joe"]})
    listing = control_for(store, tiny_base.spec).handle("list")
    assert [c.name for c in listing.concepts] == ["joe"] and listing.skipped == ()
