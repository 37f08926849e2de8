"""Fixtures of the deployment tests: deploy/k8s rendered by `kubectl kustomize`, with throwaway keys."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "gpu-tensorrt")
ADAPTER_VALUES = K8S / "monitoring" / "prometheus-adapter-values.yaml"


def kubectl() -> str:
    found = shutil.which("kubectl")
    assert found, "kubectl (with its built-in kustomize) is needed to render deploy/k8s"
    return found


def copy_tree(target: Path) -> Path:
    """A copy of deploy/k8s without any keys, then keys made by its own make-keys.sh."""
    shutil.copytree(K8S, target, ignore=shutil.ignore_patterns("keys"))
    subprocess.run(["bash", str(target / "make-keys.sh")], check=True, capture_output=True)
    return target


def adapter_rules() -> list[dict]:
    """The prometheus-adapter rules that define the HPA's pod metrics."""
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def render(tree: Path, overlay: str) -> list[dict]:
    """`kubectl kustomize` of one overlay, as a list of resources."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory) -> Path:
    return copy_tree(tmp_path_factory.mktemp("deploy") / "k8s")


@pytest.fixture(scope="session")
def rendered(k8s_tree) -> dict[str, list[dict]]:
    """Every overlay, rendered once."""
    return {overlay: render(k8s_tree, overlay) for overlay in OVERLAYS}
