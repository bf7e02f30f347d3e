"""Samplers: quasi-random search (scrambled Halton, as in Shallue et al.), TPE and random."""

from __future__ import annotations

import warnings

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, QMCSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial


class FixedSpaceQMCSampler(QMCSampler):
    """Optuna's QMCSampler told the search space up front.

    Plain ``QMCSampler`` samples the first trial with its independent (random) sampler and learns
    the space from it; with the space known, trial 0 is the sequence's first point too, and every
    batch size's study walks the same scrambled sequence.
    """

    def __init__(self, space: dict[str, BaseDistribution], **kwargs: object) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(**kwargs)  # type: ignore[arg-type]
        self._space = space

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        """Always the spec's search space."""
        return dict(self._space)


def build_sampler(name: str, seed: int, options: dict, space: dict[str, BaseDistribution]
                  ) -> BaseSampler:
    """The sampler named in the spec, seeded."""
    if name == "qmc":
        return FixedSpaceQMCSampler(
            space, qmc_type=options.get("qmc_type", "halton"),
            scramble=options.get("scramble", True), seed=seed, warn_independent_sampling=False,
        )
    if name == "tpe":
        return TPESampler(seed=seed, **options)
    if name == "random":
        return RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")
