"""Static checks that run with the suite: ruff over the code, no hub downloads, imports only go down."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUB_CALL = re.compile(r"from_pretrained\(\s*[\"'][A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+[\"']")


def test_ruff_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "clif_serve", "tests", "benchmarks"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_loads_from_a_model_hub():
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for folder in ("clif_serve", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        for match in HUB_CALL.finditer(path.read_text())
    ]
    assert not offenders, offenders


# What each package may import from clif_serve (lowest layers first); top-level modules (cli, demo,
# local) compose everything. The deployment contract sits below export, runtime and serving.
BASE = {"errors", "paths", "tensor_files", "models"}
ALLOWED = {
    "models": {"errors", "paths"},
    "lora": BASE,
    "concepts": BASE | {"lora"},
    "contract": BASE | {"lora"},
    "export": BASE | {"lora", "concepts", "contract"},
    "runtime": BASE | {"lora", "concepts", "contract"},
    "serving": BASE | {"lora", "concepts", "contract", "runtime"},
    "training": BASE | {"lora", "concepts", "contract", "runtime"},
    "bench": BASE | {"lora", "concepts", "contract", "runtime", "serving"},
    "evaluation": BASE | {"lora", "concepts", "contract", "runtime", "serving", "training", "bench"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("clif_serve.")}
    return found


def test_imports_only_go_down_the_layers():
    offenders = []
    for package, allowed in ALLOWED.items():
        for path in (ROOT / "clif_serve" / package).rglob("*.py"):
            upward = _imported_packages(path) - allowed - {package}
            if upward:
                offenders.append(f"{path.relative_to(ROOT)} imports {sorted(upward)}")
    assert not offenders, offenders
    # The checker sees imports inside functions too (the CLI imports its work lazily).
    assert {"export", "concepts"} <= _imported_packages(ROOT / "clif_serve" / "cli" / "export.py")
