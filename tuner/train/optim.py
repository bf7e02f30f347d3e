"""Building the torch optimizer and learning-rate schedule a spec names (:mod:`tuner.spec.optimizers`).

The optimizers are the libraries' own classes (``torch.optim``, ``pytorch_optimizer``); here the
spec's metaparameters become constructor arguments, and Muon's parameters are split into the
groups it needs (hidden matrices to Muon, the rest to its AdamW fallback).
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import TYPE_CHECKING, Any

from tuner.spec.optimizers import MODULE_OPTIMIZER, NAMED, SCHEDULE_KEYS, SCHEDULES, target
from tuner.spec.parse import ARG_PREFIXES

if TYPE_CHECKING:
    import torch

#: Spec metaparameters that are not the constructor argument of the same name.
RENAMED = {"learning_rate": "lr", "epsilon": "eps", "adamw_learning_rate": "adamw_lr",
           "adamw_weight_decay": "adamw_wd"}


def optimizer_class(name: str) -> type:
    """The library class a spec's optimizer name stands for (imports its package).

    Raises:
        ValueError: the package is not installed or has no such optimizer class.
    """
    package, cls = target(name).rsplit(".", 1)
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ValueError(f"{name!r} needs the {package.split('.')[0]!r} package, which does not "
                         f"import ({exc}); it is a dependency: make install") from None
    found = getattr(module, cls, None)
    if not (isinstance(found, type) and hasattr(found, "step")):
        raise ValueError(f"{package} has no optimizer class {cls!r}")
    return found


def constructor_kwargs(name: str, hp: dict[str, Any], cls: type | None = None
                       ) -> dict[str, Any]:
    """The constructor arguments for the spec's resolved metaparameters ``hp``: the batch_science
    scales undone (``one_minus_momentum`` -> ``momentum``, ``one_minus_beta1/2`` -> ``betas``),
    a few names renamed (``learning_rate`` -> ``lr``), the schedule's keys left out, and a named
    optimizer's constant arguments added (``nesterov=True``). A generic optimizer's missing beta
    takes the constructor's default (``cls``)."""
    kwargs: dict[str, Any] = dict(NAMED[name].constants) if name in NAMED else {}
    for k, v in hp.items():
        if k in SCHEDULE_KEYS or k.startswith(("one_minus_beta", *ARG_PREFIXES)):
            continue
        if k == "one_minus_momentum":
            kwargs["momentum"] = 1.0 - float(v)
        else:
            kwargs[RENAMED.get(k, k)] = v
    if "one_minus_beta1" in hp or "one_minus_beta2" in hp:
        default = (0.9, 0.999)
        if cls is not None:
            sig = inspect.signature(cls).parameters.get("betas")
            if sig is not None and isinstance(sig.default, tuple) and len(sig.default) >= 2:
                default = sig.default
        b1 = 1.0 - float(hp["one_minus_beta1"]) if "one_minus_beta1" in hp else default[0]
        b2 = 1.0 - float(hp["one_minus_beta2"]) if "one_minus_beta2" in hp else default[1]
        kwargs["betas"] = (b1, b2, *default[2:])
    return kwargs


#: Constructor arguments by the spec metaparameter that sets them, for messages.
SPEC_NAMES = {v: k for k, v in RENAMED.items()} | {"momentum": "one_minus_momentum",
                                                    "betas": "one_minus_beta1/2"}


def check(name: str, keys: set[str]) -> tuple[str, str] | None:
    """Why the optimizer cannot take metaparameters ``keys``, as (the first key it cannot take,
    or ``name`` when the class itself is the problem; a one-line message), or None when it can:
    its class imports and every key is a named argument of its constructor (an optimizer whose
    constructor also takes ``**kwargs``, as ``pytorch_optimizer``'s do, would otherwise silently
    ignore a misspelt one)."""
    if name == MODULE_OPTIMIZER:
        return None
    try:
        cls = optimizer_class(name)
    except ValueError as exc:
        return "name", str(exc)
    accepted = {p.name for p in inspect.signature(cls).parameters.values()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "params"}
    for key in sorted(keys):
        args = set(constructor_kwargs(name, {key: 0.5}, cls)) - set(
            constructor_kwargs(name, {}, cls))
        if not args <= accepted:
            allowed = ", ".join(sorted(SPEC_NAMES.get(a, a) for a in accepted))
            return key, f"{target(name)} takes no argument {key!r}; allowed: {allowed}"
    return None


def muon_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Muon's two parameter groups: the hidden weight matrices (every parameter of two or more
    dimensions except embeddings and the last such parameter, the output layer) orthogonalised
    by Muon, the rest (biases, norms, embeddings, the output layer) to its AdamW fallback, as
    Jordan et al. and pytorch_optimizer's documentation split them."""
    import torch  # heavy: torch, only when needed

    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    matrices = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2
                and id(p) not in embeddings]
    hidden = {id(p) for p in matrices[:-1]}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden]
    groups = [{"params": [p for p in model.parameters() if id(p) in hidden], "use_muon": True},
              {"params": rest, "use_muon": False}]
    return [g for g in groups if g["params"]]


def build_optimizer(name: str, model: torch.nn.Module, hp: dict[str, Any]
                    ) -> torch.optim.Optimizer:
    """A torch optimizer over ``model``'s parameters from resolved metaparameters ``hp``."""
    cls = optimizer_class(name)
    kwargs = constructor_kwargs(name, hp, cls)
    if name == "muon":
        return cls(muon_groups(model), **kwargs)
    return cls(model.parameters(), **kwargs)


def decay_steps(hp: dict[str, Any], max_steps: int) -> int:
    """Number of steps the linear decay lasts at this budget (at least 1)."""
    if hp.get("decay_steps") is not None:
        return max(1, int(hp["decay_steps"]))
    return max(1, round(float(hp["decay_fraction"]) * max_steps))


def warmup_steps(hp: dict[str, Any], max_steps: int) -> int:
    """Number of warmup steps at this budget: ``warmup_fraction * max_steps``, rounded, fewer
    than ``max_steps`` (0: no warmup)."""
    return min(max_steps - 1, round(float(hp["warmup_fraction"]) * max_steps))


def warmup_factor(step: int, warmup: int, max_steps: int, end: float, cosine: bool) -> float:
    """The learning-rate factor before optimizer step ``step`` (0-based): ``(step + 1) /
    warmup`` during the warmup, then from 1 down to ``end`` at ``max_steps``, linearly or
    along a half cosine."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if cosine:
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0 - (1.0 - end) * t


def build_schedule(
    name: str, optimizer: torch.optim.Optimizer, hp: dict[str, Any], max_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step learning-rate scheduler (call ``.step()`` after each optimizer step), or None
    for a constant learning rate (nothing to step)."""
    import torch  # heavy: torch, only when needed

    if name == "constant":
        return None
    if name == "linear_decay":
        return torch.optim.lr_scheduler.LinearLR(
            optimizer,
            start_factor=1.0,
            end_factor=float(hp["end_factor"]),
            total_iters=decay_steps(hp, max_steps),
        )
    if name in ("warmup_linear", "warmup_cosine"):
        warmup, end = warmup_steps(hp, max_steps), float(hp["end_factor"])
        cosine = name == "warmup_cosine"
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_factor(step, warmup, max_steps, end, cosine))
    raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
