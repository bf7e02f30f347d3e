"""The layers of docs/DESIGN.md hold: import-linter's contracts (pyproject.toml) and no import
cycles (scripts/import_cycles.py). Both checks are shown to catch a violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)


def cycles(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(root / "scripts" / "import_cycles.py")], cwd=root,
                          capture_output=True, text=True, env={"PYTHONPATH": str(root)},
                          timeout=120)


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for part in ("tuner", "workloads", "scripts"):
        shutil.copytree(REPO / part, root / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_contracts_are_kept_and_there_are_no_cycles() -> None:
    r = lint(REPO)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout + r.stderr
    c = cycles(REPO)
    assert c.returncode == 0 and "0 import cycles" in c.stdout, c.stdout


def test_a_layer_violation_and_a_cycle_are_caught(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    fit = root / "tuner" / "analysis" / "fit.py"
    fit.write_text(fit.read_text() + "\nfrom tuner.store import storage  # noqa\n")
    r = lint(root)
    assert r.returncode == 1 and "tuner.analysis.fit -> tuner.store.storage" in r.stdout
    records = root / "tuner" / "analysis" / "records.py"
    records.write_text(records.read_text() + "\nfrom tuner.analysis import fit  # noqa\n")
    c = cycles(root)
    assert c.returncode == 1 and "tuner.analysis.fit -> tuner.analysis.records" in c.stdout
