"""The import-linter contracts in pyproject.toml hold, and they catch an upward import."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wire", "client_sdk", "strategies", "server", "simulations", "pollen")
LINT = str(Path(sys.executable).parent / "lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT, "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)},
    )


def _copy(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_contracts_hold_on_the_tree(tmp_path):
    done = _lint(_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    root = _copy(tmp_path)
    (root / "wire" / "upward.py").write_text("import server.config\n")
    done = _lint(root)
    assert done.returncode != 0 and "Layers: imports point down only BROKEN" in done.stdout


def test_torch_in_strategies_and_sibling_imports_are_refused(tmp_path):
    root = _copy(tmp_path)
    (root / "strategies" / "uses_torch.py").write_text("import torch\n")
    (root / "client_sdk" / "uses_strategies.py").write_text("import strategies.stats\n")
    done = _lint(root)
    assert done.returncode != 0
    assert "strategies never import torch BROKEN" in done.stdout
    assert "Layers: imports point down only BROKEN" in done.stdout
