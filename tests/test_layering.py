"""The import-linter contracts in pyproject.toml hold, and they catch an upward import."""

import ast
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


def _test_module_imports(source: str) -> list[str]:
    """The ``test_*`` modules a test module's source imports (shared code lives in helpers)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            modules = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        found += [m for m in modules if m.rsplit(".", 1)[-1].startswith("test_")]
    return found


def test_no_test_module_imports_another_test_module():
    importing = {
        str(path.relative_to(ROOT)): names
        for path in sorted((ROOT / "tests").rglob("test_*.py"))
        if (names := _test_module_imports(path.read_text()))
    }
    assert importing == {}, "move shared helpers to tests/helpers/ or a conftest fixture"


def test_an_import_of_another_test_module_is_found():
    source = (
        "from tests.wire.test_format import _payload\n"
        "from tests.simulations.batched import test_training\n"
        "import tests.strategies.test_pooling as pooling\n"
        "from tests.helpers.replies import GLOBAL\n"
        "from . import fake_grid\n"
    )
    assert _test_module_imports(source) == [
        "tests.wire.test_format",
        "tests.simulations.batched.test_training",
        "tests.strategies.test_pooling",
    ]
