"""Workload registry: a spec's ``[workload] name`` -> a :class:`tuner.workload.Workload` class.

Built-in workloads are imported only when asked for. A spec may also name any importable class as
``"package.module:ClassName"``; :func:`register` adds a name for your own class.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

from tuner.core.errors import one_line
from tuner.workload.base import Workload

__all__ = ["get", "import_object", "names", "one_line", "register"]

_BUILTIN = {
    "digits": "workloads.digits:Digits",
    "fashion_mnist": "workloads.fashion_mnist:FashionMNIST",
    "nqm": "workloads.nqm:NQM",
    "lightning": "tuner.workload.lightning:LightningWorkload",
}
_REGISTERED: dict[str, type[Workload]] = {}


def register(cls: type[Workload]) -> type[Workload]:
    """Register a workload class under its ``name`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a class attribute `name`")
    _REGISTERED[cls.name] = cls
    return cls


def names() -> list[str]:
    """Every registered workload name."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get(name: str) -> type[Workload]:
    """The workload class for a registry name or a ``module:Class`` path.

    Raises:
        KeyError: with a message that lists the allowed names.
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    path = _BUILTIN.get(name, name if ":" in name else None)
    if path is None:
        raise KeyError(f"unknown workload {name!r}; allowed: {', '.join(names())} "
                       "or 'package.module:Class'")
    if not path.partition(":")[0] or not path.partition(":")[2]:
        raise KeyError(f"{name!r}: allowed: a registered name ({', '.join(names())}) or "
                       "'package.module:Class'")
    cls = import_object(path, "workload")
    if not (isinstance(cls, type) and issubclass(cls, Workload)):
        if isinstance(cls, type) and callable(getattr(cls, "training_step", None)):
            raise KeyError(f"{name!r} is a LightningModule, not a tuner.workload.Workload "
                           f"subclass; allowed: [workload] module = {name!r} (and datamodule = "
                           "...; workloads/README.md)")
        raise KeyError(f"{name!r} is not a tuner.workload.Workload subclass")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise KeyError(f"workload {name!r} is abstract: it does not implement {missing}")
    return cls


def import_object(path: str, what: str) -> object:
    """The object a ``"package.module:Name"`` path names.

    Raises:
        KeyError: one line: the path, and the import error's last line (or the missing name).
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise KeyError(f"{path!r}; allowed: 'package.module:Name'")
    if os.getcwd() not in sys.path:  # as `python -m` would: your package in the current folder
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - a plug-in's import may raise anything
        raise KeyError(f"cannot import {what} {path!r}: {one_line(exc)}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise KeyError(f"cannot import {what} {path!r}: module {module_name!r} has no "
                       f"attribute {attr!r}")
    return obj
