"""Optuna's private API is used in one module, tuner.store.compat, behind its version check.

Everything else in tuner uses Optuna's public API only: no ``optuna.*._module`` import, no
attribute, method override or ``getattr`` string naming something Optuna defines with a leading
underscore (``study._storage``, ``sampler._rng``, ``def _sample_qmc``, ``"_backend"``). The source
tree is read with :mod:`ast`; Optuna's private names are read from its installed source, so a new
Optuna's new internals count too.
"""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner.store import compat

ROOT = Path(__file__).resolve().parents[2]
TUNER = ROOT / "tuner"
COMPAT = TUNER / "store" / "compat.py"
PRIVATE = re.compile(r"_[A-Za-z]\w*")  # a leading underscore, not a dunder
PRIVATE_MODULE_PATH = re.compile(r"\boptuna(\.\w+)*\._[A-Za-z]")


def _private(name: str) -> bool:
    return bool(PRIVATE.fullmatch(name)) and not name.endswith("__")


@cache
def optuna_private_names() -> frozenset[str]:
    """Every private name Optuna's source defines: functions, methods, classes, attributes and
    module-level variables whose name starts with one underscore."""
    out: set[str] = set()
    for f in Path(optuna.__file__).parent.rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(n.name)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
                out.add(n.attr)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                out.add(n.id)
    return frozenset(x for x in out if _private(x))


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = n.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def private_uses(source: str, private: frozenset[str]) -> list[str]:
    """Where ``source`` uses a private Optuna name: 'line: what' for each."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    out = []
    for n in ast.walk(tree):
        line = getattr(n, "lineno", 0)
        if isinstance(n, ast.Import):
            for a in n.names:
                parts = a.name.split(".")
                if parts[0] == "optuna" and any(_private(p) for p in parts):
                    out.append(f"{line}: import {a.name}")
        elif isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "optuna":
            parts = n.module.split(".")
            names = [a.name for a in n.names]
            if any(_private(p) for p in parts) or any(_private(x) for x in names):
                out.append(f"{line}: from {n.module} import {', '.join(names)}")
        elif isinstance(n, ast.Attribute) and n.attr in private:
            out.append(f"{line}: .{n.attr}")
        elif isinstance(n, ast.ClassDef):
            for f in n.body:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name in private:
                    out.append(f"{f.lineno}: def {f.name} (overrides an Optuna internal)")
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            if n.value in private:
                out.append(f"{line}: {n.value!r}")
            elif PRIVATE_MODULE_PATH.search(n.value):
                out.append(f"{line}: {n.value!r}")
    return out


def test_only_compat_touches_private_optuna_api() -> None:
    private = optuna_private_names()
    assert {"_storage", "_trial_id", "_rng", "_sample_qmc", "_backend"} <= private
    found = {}
    for f in sorted(TUNER.rglob("*.py")):
        if f != COMPAT and (uses := private_uses(f.read_text(encoding="utf-8"), private)):
            found[str(f.relative_to(ROOT))] = uses
    assert not found, ("private Optuna API outside tuner/store/compat.py (wrap it there, behind "
                       f"its version check, or use a public API; a name of tuner's own that "
                       f"happens to be one of Optuna's: rename it): {found}")
    # compat does use them: the check is not blind
    assert private_uses(COMPAT.read_text(encoding="utf-8"), private)


def test_the_check_finds_each_kind_of_private_use() -> None:
    private = optuna_private_names()
    bad = '''
import importlib
import optuna.storages._heartbeat
from optuna.storages._rdb import models
from optuna.samplers import _base
from optuna.samplers import QMCSampler


class Mine(QMCSampler):
    def _sample_qmc(self, study, space):
        return super()._sample_qmc(study, space)


def f(study, sampler, storage):
    study._storage.get_trial(0)
    sampler._rng.rng.seed(1)
    getattr(storage, "_backend", storage)
    importlib.import_module("optuna.storages._rdb.models")
'''
    uses = private_uses(bad, private)
    for what in ("import optuna.storages._heartbeat", "from optuna.storages._rdb import models",
                 "from optuna.samplers import _base", "def _sample_qmc", "._sample_qmc",
                 "._storage", "._rng", "'_backend'", "'optuna.storages._rdb.models'"):
        assert any(what in u for u in uses), (what, uses)
    fine = '''
"""Docs may name optuna.storages._rdb.models."""
import optuna
from optuna.samplers import BaseSampler


class Mine(BaseSampler):
    def __init__(self):
        self._my_own_counter = 0

    def _my_helper(self):
        return optuna.samplers.RandomSampler(seed=self._my_own_counter)
'''
    assert private_uses(fine, private) == []


def test_compat_refuses_an_untested_optuna_major() -> None:
    code = ("import optuna; optuna.__version__ = '6.0.0'\n"
            "try:\n    import tuner.store.compat\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert "tuner needs optuna 5.x" in out.stdout and "found 6.0.0" in out.stdout, out


def test_the_core_tables_are_optunas_columns_and_values_decode_as_optuna_does() -> None:
    # tuner.store.rows reads Optuna's tables through Core tables of its own (no sqlalchemy.orm
    # import); each column must be the model's, with the same kind of type
    import sqlalchemy as sa

    from optuna.storages._rdb import models as m  # the test may name them: it checks compat

    theirs = {t.name: t for t in m.BaseModel.metadata.sorted_tables}
    for name, table in compat.tables().items():
        assert set(table.c.keys()) <= set(theirs[name].c.keys()), name
        for col in table.c:
            want = theirs[name].c[col.name].type
            got = col.type
            if isinstance(want, sa.Enum):
                if col.name == "state":
                    assert isinstance(got, sa.Enum) and got.enum_class is TrialState
                else:  # the stored names, decoded by stored_float
                    assert isinstance(got, sa.String) and not isinstance(got, sa.Enum)
                continue
            assert got._type_affinity is want._type_affinity, (name, col.name)
    for kind in m.TrialValueModel.TrialValueType:
        value = None if kind.name.startswith("INF") else 0.25
        assert compat.stored_float(value, kind.name) == \
            m.TrialValueModel.stored_repr_to_value(value, kind)
    for kind in m.TrialIntermediateValueModel.TrialIntermediateValueType:
        value = 0.25 if kind.name == "FINITE" else None
        got = compat.stored_float(value, kind.name)
        want = m.TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind)
        assert got == want or (math.isnan(got) and math.isnan(want)), kind
