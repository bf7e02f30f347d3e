"""The batch_science layout (google-research's ``batch_science/README.md``), read and written.

::

    dataset/model/optimizer/batch_size/study.json
    dataset/model/optimizer/batch_size/trial_id/metadata.json
    dataset/model/optimizer/batch_size/trial_id/measurements.csv

A *workload* directory (``dataset/model/optimizer``) holds one study directory per batch size; a
root may hold many workloads, at any depth (``mnist_subsets/...``). ``study.json`` has
``batch_size``, ``dataset``, ``model``, ``optimizer``, ``early_stopping``,
``parameter_configs`` and ``train_steps``; ``metadata.json`` has ``parameters``, ``status``
(``COMPLETE`` | ``INCOMPLETE`` | ``INFEASIBLE``), ``steps`` and ``trial_id``; ``measurements.csv``
has a ``step`` column and one column per metric (e.g. ``val/classification_error``).

Plain files and plain data: nothing here knows about Optuna. The search space maps to ours as
the paper sampled it: ``LOG_SCALE`` -> ``log``, ``LINEAR_SCALE`` (or none) -> linear,
``REVERSE_LOG_SCALE`` (1 - value sampled in log space) -> a parameter ``one_minus_NAME`` in log
space, ``INTEGER`` -> int, ``DISCRETE`` -> choices.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.core.errors import UsageError

STATUSES = ("COMPLETE", "INCOMPLETE", "INFEASIBLE")
SCALES = ("LOG_SCALE", "LINEAR_SCALE", "REVERSE_LOG_SCALE", "")
TYPES = ("DOUBLE", "INTEGER", "DISCRETE")
STUDY_KEYS = ("batch_size", "dataset", "model", "optimizer", "parameter_configs")
TRIAL_KEYS = ("parameters", "status", "trial_id")
REVERSED = "one_minus_"


@dataclass
class Trial:
    """One trial directory: its ``metadata.json`` and its measurements (``step`` -> row)."""

    metadata: dict[str, Any]
    columns: list[str]  # the metric columns, in the file's order (``step`` not included)
    steps: list[int]
    rows: list[list[float | None]]  # one per step, a value per column (None: empty cell)

    @property
    def trial_id(self) -> int:
        """The trial's id in its study."""
        return int(self.metadata["trial_id"])

    @property
    def status(self) -> str:
        """``COMPLETE`` | ``INCOMPLETE`` | ``INFEASIBLE``."""
        return str(self.metadata["status"])

    def curve(self) -> dict[str, Any]:
        """The measurements in the shape of our ``curve`` attr: ``{"steps", "metrics"}``."""
        return {"steps": list(self.steps),
                "metrics": {c: [r[i] for r in self.rows] for i, c in enumerate(self.columns)}}


@dataclass
class Study:
    """One study directory (one batch size of a workload)."""

    path: Path
    meta: dict[str, Any]  # study.json
    trials: list[Trial] = field(default_factory=list)  # sorted by trial id

    @property
    def batch_size(self) -> int:
        """The study's batch size."""
        return int(self.meta["batch_size"])


def _fail(path: Path, key: str, what: str) -> UsageError:
    return UsageError(f"{path}: {key}: {what}")


def _json(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not JSON: {exc}") from None
    if not isinstance(out, dict):
        raise UsageError(f"{path}: not a JSON object")
    return out


def number(text: str) -> float | None:
    """A measurement cell: a float, None for an empty cell or NaN (our curves hold null where a
    metric is missing)."""
    if text.strip() == "":
        return None
    v = float(text)
    return None if math.isnan(v) else v


def read_measurements(path: Path) -> tuple[list[str], list[int], list[list[float | None]]]:
    """``measurements.csv``: its metric columns, steps and rows (sorted by step).

    Raises:
        UsageError: no ``step`` column, or a cell that is not a number.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or "step" not in header:
        raise _fail(path, "step", "no such column; allowed: a CSV file whose header has a "
                    "`step` column and one column per metric")
    at = header.index("step")
    columns = [c for i, c in enumerate(header) if i != at]
    rows: list[tuple[int, list[float | None]]] = []
    for n, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            step = int(float(row[at]))
            values = [number(v) for i, v in enumerate(row) if i != at]
        except (ValueError, IndexError):
            raise _fail(path, f"line {n}", f"{row!r} is not a row of numbers") from None
        if len(values) != len(columns):
            raise _fail(path, f"line {n}", f"{len(values) + 1} cells, the header has "
                        f"{len(header)}")
        rows.append((step, values))
    rows.sort(key=lambda r: r[0])
    return columns, [s for s, _ in rows], [v for _, v in rows]


def check_configs(path: Path, configs: Any) -> None:
    """Refuse a ``parameter_configs`` we cannot turn into a search space, naming the key."""
    if not isinstance(configs, dict):
        raise _fail(path, "parameter_configs", "not an object")
    for name, c in configs.items():
        key = f"parameter_configs.{name}"
        kind = c.get("type") if isinstance(c, dict) else None
        if kind not in TYPES:
            raise _fail(path, f"{key}.type", f"{kind!r}; allowed: {', '.join(TYPES)}")
        if kind == "DISCRETE":
            if not isinstance(c.get("feasible_points"), list) or not c["feasible_points"]:
                raise _fail(path, f"{key}.feasible_points", "missing or empty; allowed: a "
                            "non-empty list")
            continue
        if c.get("scale", "") not in SCALES:
            raise _fail(path, f"{key}.scale", f"{c.get('scale')!r}; allowed: "
                        f"{', '.join(repr(s) for s in SCALES)}")
        lo, hi = c.get("min_value"), c.get("max_value")
        if not all(isinstance(v, (int, float)) for v in (lo, hi)) or not lo <= hi:
            raise _fail(path, key, f"min_value {lo!r}, max_value {hi!r}; allowed: numbers, "
                        "min_value <= max_value")
        if c.get("scale") == "REVERSE_LOG_SCALE" and not hi < 1:
            raise _fail(path, f"{key}.max_value", f"{hi!r}; allowed: < 1 for "
                        "REVERSE_LOG_SCALE (1 - value is sampled in log space)")
        if c.get("scale") == "LOG_SCALE" and not lo > 0:
            raise _fail(path, f"{key}.min_value", f"{lo!r}; allowed: > 0 for LOG_SCALE")


def read_study(path: Path) -> Study:
    """A study directory: ``study.json`` and every trial directory (sorted by trial id).

    Raises:
        UsageError: a missing key, an unknown status, type or scale, or an unreadable file,
            naming the file and the key.
    """
    meta = _json(path / "study.json")
    for key in STUDY_KEYS:
        if key not in meta:
            raise _fail(path / "study.json", key, f"missing; allowed: a study.json with "
                        f"{', '.join(STUDY_KEYS)}")
    if not isinstance(meta["batch_size"], int) or meta["batch_size"] < 1:
        raise _fail(path / "study.json", "batch_size", f"{meta['batch_size']!r}; allowed: a "
                    "positive integer")
    check_configs(path / "study.json", meta["parameter_configs"])
    study = Study(path, meta)
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        md = _json(sub / "metadata.json")
        for key in TRIAL_KEYS:
            if key not in md:
                raise _fail(sub / "metadata.json", key, f"missing; allowed: a metadata.json "
                            f"with {', '.join(TRIAL_KEYS)}")
        if md["status"] not in STATUSES:
            raise _fail(sub / "metadata.json", "status", f"{md['status']!r}; allowed: "
                        f"{', '.join(STATUSES)}")
        extra = set(md["parameters"]) - set(meta["parameter_configs"])
        if extra:
            raise _fail(sub / "metadata.json", f"parameters.{sorted(extra)[0]}", "not in "
                        "the study's parameter_configs")
        columns, steps, rows = read_measurements(sub / "measurements.csv")
        study.trials.append(Trial(md, columns, steps, rows))
    ids = [t.trial_id for t in study.trials]
    if len(set(ids)) != len(ids):
        raise _fail(path, "trial_id", "two trial directories have the same trial_id")
    study.trials.sort(key=lambda t: t.trial_id)
    return study


def find_workloads(root: Path) -> dict[str, list[Path]]:
    """Workload -> its study directories (sorted by batch size), for a workload directory or
    any root that holds workloads below it. The workload key is the workload directory's path
    relative to ``root`` (``"."`` when ``root`` is the workload directory).

    Raises:
        UsageError: ``root`` is not a directory or holds no ``study.json``.
    """
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory; allowed: a batch_science workload "
                         "directory (dataset/model/optimizer) or a folder holding some")
    found: dict[str, list[Path]] = {}
    for sj in sorted(root.rglob("study.json")):
        study = sj.parent
        key = str(study.parent.relative_to(root)) if study != root else "."
        found.setdefault(key, []).append(study)
    if not found:
        raise UsageError(f"{root}: no study.json below it; allowed: a batch_science workload "
                         "directory (dataset/model/optimizer/BATCH/study.json) or a folder "
                         "holding some")
    for key, dirs in found.items():
        dirs.sort(key=lambda d: _json(d / "study.json").get("batch_size", 0))
    return found


def our_name(name: str, config: dict[str, Any]) -> str:
    """Our parameter's name: ``one_minus_NAME`` for a ``REVERSE_LOG_SCALE`` parameter."""
    return REVERSED + name if config.get("scale") == "REVERSE_LOG_SCALE" else name


def our_value(config: dict[str, Any], value: Any) -> Any:
    """A parameter value in our space (``1 - value`` for ``REVERSE_LOG_SCALE``)."""
    if config.get("scale") == "REVERSE_LOG_SCALE":
        return 1.0 - float(value)
    if config.get("type") == "INTEGER":
        return int(value)
    if config.get("type") == "DOUBLE":
        return float(value)
    return value


def search_space(configs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``parameter_configs`` -> our ``search_space`` attr (``{name: {low, high, log[, int]}``
    or ``{choices}``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, c in configs.items():
        if c["type"] == "DISCRETE":
            out[name] = {"choices": list(c["feasible_points"])}
        elif c.get("scale") == "REVERSE_LOG_SCALE":
            out[our_name(name, c)] = {"low": 1.0 - float(c["max_value"]),
                                      "high": 1.0 - float(c["min_value"]), "log": True}
        elif c["type"] == "INTEGER":
            out[name] = {"low": int(c["min_value"]), "high": int(c["max_value"]),
                         "log": c.get("scale") == "LOG_SCALE", "int": True}
        else:
            out[name] = {"low": float(c["min_value"]), "high": float(c["max_value"]),
                         "log": c.get("scale") == "LOG_SCALE"}
    return out


def parameter_configs(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Our ``search_space`` attr -> ``parameter_configs`` (the inverse of
    :func:`search_space`: a log-scale ``one_minus_NAME`` becomes ``NAME`` in
    ``REVERSE_LOG_SCALE``)."""
    out: dict[str, Any] = {}
    for name, p in space.items():
        if "choices" in p:
            out[name] = {"feasible_points": list(p["choices"]), "type": "DISCRETE"}
        elif name.startswith(REVERSED) and p.get("log") and not p.get("int"):
            out[name[len(REVERSED):]] = {"max_value": 1.0 - p["low"], "min_value": 1.0 - p["high"],
                                         "scale": "REVERSE_LOG_SCALE", "type": "DOUBLE"}
        else:
            out[name] = {"max_value": p["high"], "min_value": p["low"],
                         "scale": "LOG_SCALE" if p.get("log") else
                         ("" if p.get("int") else "LINEAR_SCALE"),
                         "type": "INTEGER" if p.get("int") else "DOUBLE"}
    return out


def their_params(space: dict[str, dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Our trial params -> ``metadata.json`` ``parameters`` (``1 - x`` for ``one_minus_NAME``)."""
    configs = parameter_configs(space)
    out: dict[str, Any] = {}
    for name, v in params.items():
        if name.startswith(REVERSED) and configs.get(name[len(REVERSED):], {}).get(
                "scale") == "REVERSE_LOG_SCALE":
            out[name[len(REVERSED):]] = 1.0 - v
        else:
            out[name] = v
    return out


def cell(v: float | None) -> str:
    """A measurement as written: the shortest text that reads back as the same float; empty
    for a missing one."""
    return "" if v is None else repr(float(v))


def write_study(path: Path, meta: dict[str, Any], trials: list[Trial]) -> None:
    """Write one study directory: ``study.json`` and a directory per trial."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "study.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for t in trials:
        sub = path / str(t.trial_id)
        sub.mkdir(exist_ok=True)
        (sub / "metadata.json").write_text(json.dumps(t.metadata, indent=2, sort_keys=True)
                                           + "\n")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["step", *t.columns])
        for step, row in zip(t.steps, t.rows):
            w.writerow([step, *[cell(v) for v in row]])
        (sub / "measurements.csv").write_text(buf.getvalue())
