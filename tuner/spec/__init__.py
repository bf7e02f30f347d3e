"""Study specs: a TOML file -> a typed :class:`Spec` (pure: imports neither torch nor workloads).

See :mod:`tuner.spec.parse` and ``studies/README.md``.
"""

from tuner.spec.parse import (
    ACCELERATORS,
    DIRECTIONS,
    MAX_NAME,
    MAX_STEPS,
    OPTUNA_PRUNERS,
    PRECISIONS,
    PRUNERS,
    SAMPLERS,
    SEED_MAX,
    TOP_KEYS,
    Budget,
    Cadence,
    PrunerSpec,
    Resolver,
    SamplerSpec,
    Spec,
    load,
    load_series,
    parse,
    with_seed,
)

__all__ = ["ACCELERATORS", "DIRECTIONS", "MAX_NAME", "MAX_STEPS", "OPTUNA_PRUNERS", "PRECISIONS",
           "PRUNERS", "SAMPLERS", "SEED_MAX", "TOP_KEYS", "Budget", "Cadence", "PrunerSpec",
           "Resolver", "SamplerSpec", "Spec", "load", "load_series", "parse", "with_seed"]
