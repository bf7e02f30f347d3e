"""A spec that declares a series: one spec per value of one key (Shallue et al.'s data-set-size
experiments, section 4.5: the same workload on nested subsets of the training set).

::

    [series]
    "workload.train_size" = [2000, 8000, 30000, 50000]

expands into one spec per value, each with its own studies, named ``NAME.train_size2000``
(``NAME`` the file's name, the key's last part, the value) and the value in place of the key.
Every member is validated as a spec of its own; an error names the member's value. The key is
``TABLE.KEY`` with ``TABLE`` one of :data:`TABLES` (the table may be absent from the file).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from tuner.core.errors import SpecError

#: The tables a series may vary a key of.
TABLES = ("workload", "optimizer", "target", "budget", "eval", "trainer")
_VALUE = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class Series:
    """What a member spec of a series is: the series' name, key and this member's value."""

    name: str  # the series (the file's spec name)
    key: str  # e.g. "workload.train_size"
    value: Any

    def to_attr(self) -> dict[str, Any]:
        """The study attr ``series`` (docs/DESIGN.md section 4)."""
        return {"name": self.name, "key": self.key, "value": self.value}


def members(data: dict[str, Any], path: str, name: str) -> list[tuple[str, dict[str, Any], Series]]:
    """The member documents of a series spec: (member name, TOML document, :class:`Series`).

    Raises:
        SpecError: the ``[series]`` table is not one ``"TABLE.KEY" = [values]`` entry, a value
            is not a number or a simple string, or values repeat.
    """
    table = data["series"]
    allowed = (f'one entry "TABLE.KEY" = [value, ...] with TABLE one of {", ".join(TABLES)}, '
               'e.g. "workload.train_size" = [2000, 8000]')
    if not isinstance(table, dict) or len(table) != 1:
        raise SpecError(path, "series", f"{len(table) if isinstance(table, dict) else 'not a'} "
                        f"table entries; allowed: {allowed}")
    key, values = next(iter(table.items()))
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in TABLES or not parts[1]:
        raise SpecError(path, f"series.{key}", f"{key!r}; allowed: {allowed}")
    if not isinstance(values, list) or len(values) < 2:
        raise SpecError(path, f"series.{key}", "allowed: a list of at least 2 values")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)) or not _VALUE.fullmatch(
                str(v)):
            raise SpecError(path, f"series.{key}", f"{v!r}; allowed: numbers or strings of "
                            "letters, digits, '_', '.', '-' (they become part of the name)")
    if len({str(v) for v in values}) != len(values):
        raise SpecError(path, f"series.{key}", f"values repeat: {values}")
    table_name, leaf = parts
    out = []
    for v in values:
        doc = copy.deepcopy({k: x for k, x in data.items() if k not in ("series", "name")})
        section = doc.setdefault(table_name, {})
        if not isinstance(section, dict):
            raise SpecError(path, table_name, "not a table; allowed: a table")
        section[leaf] = v
        out.append((f"{name}.{leaf}{v}", doc, Series(name, key, v)))
    return out

