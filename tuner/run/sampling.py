"""Samplers: quasi-random search (scrambled Halton, as in Shallue et al.), TPE and random.

Each is driven by the trial's *slot* (:mod:`tuner.run.trialqueue`): the quasi-random sampler takes
the slot-th point of its sequence, and random/TPE reseed from (seed, slot) before each trial, so
several workers never draw the same point and a slot's point does not depend on who ran it.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.stats.qmc as qmc_module
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, QMCSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial


def slot_seed(seed: int, trial: FrozenTrial) -> int:
    """A 32-bit seed from the sampler seed and the trial's slot."""
    slot = int(trial.user_attrs.get("slot", trial.number))
    return int(np.random.SeedSequence([seed, slot]).generate_state(1)[0])


class FixedSpaceQMCSampler(QMCSampler):
    """Optuna's QMCSampler told the search space up front, indexed by the trial's slot.

    Plain ``QMCSampler`` samples the first trial with its independent (random) sampler and learns
    the space from it; with the space known, trial 0 is the sequence's first point too, and every
    batch size's study walks the same scrambled sequence. Plain ``QMCSampler`` also counts its
    position in a study attr that concurrent workers race on; here slot s is point s.
    """

    def __init__(self, space: dict[str, BaseDistribution], **kwargs: object) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(**kwargs)  # type: ignore[arg-type]
        self._space = space
        self._slot: int | None = None
        self._block: np.ndarray | None = None

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        """Always the spec's search space."""
        return dict(self._space)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Remember the trial's slot: the index of its point in the sequence."""
        super().before_trial(study, trial)
        self._slot = trial.user_attrs.get("slot")

    def _sample_qmc(self, study: Study, search_space: dict[str, BaseDistribution]) -> np.ndarray:
        """The slot's point, from a cached block of the sequence.

        Optuna builds a scrambled engine and fast-forwards it for every trial (~5 ms here, more
        than an NQM trial); the sequence is deterministic, so rows of one ``random(n)`` block are
        the same points.
        """
        if self._slot is None:
            return super()._sample_qmc(study, search_space)
        slot, d = int(self._slot), len(search_space)
        if self._block is None or self._block.shape[1] != d or slot >= len(self._block):
            n = max(2 * slot + 2, 128)
            if self._qmc_type == "halton":
                engine = qmc_module.Halton(d, seed=self._seed, scramble=self._scramble)
            else:
                return super()._sample_qmc(study, search_space)  # sobol: Optuna's own path
            self._block = engine.random(n)
        return self._block[slot:slot + 1]

    def _find_sample_id(self, study: Study, search_space: dict[str, BaseDistribution]) -> int:
        if self._slot is None:  # a trial made outside the work queue
            return super()._find_sample_id(study, search_space)
        return int(self._slot)


class SlotRandomSampler(RandomSampler):
    """Optuna's RandomSampler, reseeded from (seed, slot) before each trial."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._base_seed = seed

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Reseed for this trial's slot."""
        self._rng.rng.seed(slot_seed(self._base_seed, trial))


class SlotTPESampler(TPESampler):
    """Optuna's TPESampler, reseeded from (seed, slot) before each trial.

    Its suggestions still depend on which trials had finished when it ran (that is TPE);
    concurrent workers at least never share a random stream.
    """

    def __init__(self, seed: int, **options: object) -> None:
        super().__init__(seed=seed, **options)  # type: ignore[arg-type]
        self._base_seed = seed

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Reseed for this trial's slot."""
        super().before_trial(study, trial)
        s = slot_seed(self._base_seed, trial)
        self._rng.rng.seed(s)
        self._random_sampler._rng.rng.seed(s)


def build_sampler(name: str, seed: int, options: dict, space: dict[str, BaseDistribution]
                  ) -> BaseSampler:
    """The sampler named in the spec, seeded."""
    if name == "qmc":
        return FixedSpaceQMCSampler(
            space, qmc_type=options.get("qmc_type", "halton"),
            scramble=options.get("scramble", True), seed=seed, warn_independent_sampling=False,
        )
    if name == "tpe":
        return SlotTPESampler(seed=seed, **options)
    if name == "random":
        return SlotRandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")
