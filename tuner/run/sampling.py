"""Samplers: quasi-random search (scrambled Halton, as in Shallue et al.), TPE and random.

Each is driven by the trial's *slot* (:mod:`tuner.run.trialqueue`): the quasi-random sampler takes
the slot-th point of its sequence, and random/TPE run each trial with a fresh Optuna sampler
seeded from (seed, slot), so several workers never draw the same point and a slot's point does not
depend on who ran it.

All three are user-defined samplers on Optuna's public :class:`~optuna.samplers.BaseSampler` API;
none reaches into Optuna's own samplers (``tests/store/test_compat.py`` checks that no module but
:mod:`tuner.store.compat` touches a private Optuna name).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from tuner.store.source import slot_of

QMC_TYPES = ("halton", "sobol")
#: Per-trial samplers kept at once by :class:`SlotSampler` (trials in flight in one process).
KEEP = 32


def slot_seed(seed: int, trial: FrozenTrial) -> int:
    """A 32-bit seed from the sampler seed and the trial's slot."""
    return int(np.random.SeedSequence([seed, slot_of(trial)]).generate_state(1)[0])


def unit_to_params(u: np.ndarray, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The params at ``u`` (a point of the unit cube, one coordinate per entry of ``space``, in
    its order), mapped as Optuna's ``QMCSampler`` maps its points (optuna 5.0
    ``samplers/_qmc.py`` with ``_SearchSpaceTransform(transform_0_1=True)``), operation for
    operation, so the floats are identical.

    Numbers go linearly into their range (in log space if ``log``; ints and stepped floats with
    half a step beyond each end, then rounded); a categorical takes one coordinate scaled to
    ``[0, C)`` and floored to a choice index.
    """
    out: dict[str, Any] = {}
    for x, (name, d) in zip(u.tolist(), space.items()):
        lo, hi = _bounds(d)
        v = lo + x * (hi - lo)
        out[name] = _untransform(v, d)
    return out


def _bounds(d: BaseDistribution) -> tuple[float, float]:
    """The distribution's range in the space the unit cube is mapped to."""
    if isinstance(d, CategoricalDistribution):
        return 0.0, float(len(d.choices))
    if isinstance(d, FloatDistribution):
        lo, hi = (math.log(d.low), math.log(d.high)) if d.log else (float(d.low), float(d.high))
        if d.step is not None:
            return lo - 0.5 * d.step, hi + 0.5 * d.step
        return lo, hi
    if isinstance(d, IntDistribution):
        half = 0.5 * d.step
        if d.log:
            return math.log(d.low - half), math.log(d.high + half)
        return float(d.low) - half, float(d.high) + half
    raise TypeError(f"unsupported distribution {d!r}")


def _untransform(v: float, d: BaseDistribution) -> Any:
    """A value of the mapped range back in the distribution, as Optuna rounds and clips it."""
    if isinstance(d, CategoricalDistribution):
        c = float(len(d.choices))
        return d.to_external_repr(int(min(v, np.nextafter(c, c - 1))))
    if isinstance(d, FloatDistribution):
        if d.log:
            p = math.exp(v)
            return p if d.single() else float(np.clip(p, d.low, np.nextafter(d.high, d.high - 1)))
        if d.step is not None:
            return float(np.clip(np.round((v - d.low) / d.step) * d.step + d.low, d.low, d.high))
        return v if d.single() else float(min(v, np.nextafter(d.high, d.high - 1)))
    assert isinstance(d, IntDistribution)
    if d.log:
        p = int(round(math.exp(v)))
    else:
        p = math.floor((v - d.low) / d.step + 0.5) * d.step + d.low
    return min(max(p, d.low), d.high)


class SlotSampler(BaseSampler):
    """Runs each trial with its own Optuna sampler, made by ``make(seed)`` with a seed from
    (``seed``, the trial's slot).

    Optuna's samplers draw from one random stream per sampler object; a fresh one per trial makes
    a slot's draws the same whichever worker runs it, and never shared between workers. (What a
    TPE trial suggests still depends on the trials finished when it starts: that is TPE.)
    """

    def __init__(self, seed: int, make: Callable[[int], BaseSampler]) -> None:
        self.seed = seed
        self.make = make
        self._per_trial: dict[tuple[str, int], BaseSampler] = {}
        self._mutex = threading.Lock()

    def sampler_for(self, study: Study, trial: FrozenTrial) -> BaseSampler:
        """The trial's own sampler (made on first use)."""
        key = (study.study_name, trial.number)
        with self._mutex:
            s = self._per_trial.get(key)
            if s is None:
                s = self._per_trial[key] = self.make(slot_seed(self.seed, trial))
                while len(self._per_trial) > KEEP:  # trials failed without after_trial
                    del self._per_trial[next(iter(self._per_trial))]
        return s

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        """The trial's sampler's relative search space."""
        return self.sampler_for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """The trial's sampler's relative sample."""
        return self.sampler_for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """The trial's sampler's independent sample."""
        return self.sampler_for(study, trial).sample_independent(
            study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Make the trial's sampler and pass the call on."""
        self.sampler_for(study, trial).before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """Pass the call on, then drop the trial's sampler."""
        try:
            self.sampler_for(study, trial).after_trial(study, trial, state, values)
        finally:
            with self._mutex:
                self._per_trial.pop((study.study_name, trial.number), None)


class SlotQMCSampler(BaseSampler):
    """Quasi-random search over a search space known up front: slot s is the sequence's s-th point.

    The points are those of Optuna's ``QMCSampler(qmc_type=, scramble=, seed=)`` (scipy's
    scrambled Halton or Sobol engine, mapped by :func:`unit_to_params`), with two differences:
    plain ``QMCSampler`` samples the first trial with its independent (random) sampler and learns
    the space from it, and it counts its position in a study attr that concurrent workers race
    on. Here the space is the spec's, trial 0 is the first point, and slot s is point s, so every
    batch size's study walks the same sequence.

    A parameter outside the space (or suggested with another distribution) is drawn by a random
    sampler seeded from (seed, slot).
    """

    def __init__(self, space: dict[str, BaseDistribution], qmc_type: str = "halton",
                 scramble: bool = True, seed: int = 0) -> None:
        if qmc_type not in QMC_TYPES:
            raise ValueError(f"qmc_type {qmc_type!r}; allowed: {', '.join(QMC_TYPES)}")
        self.space = dict(space)
        self.qmc_type = qmc_type
        self.scramble = scramble
        self.seed = seed
        self.fallback = SlotSampler(seed, lambda s: RandomSampler(seed=s))
        self._block = np.empty((0, len(self.space)))
        self._mutex = threading.Lock()

    def unit_point(self, slot: int) -> np.ndarray:
        """The sequence's ``slot``-th point in the unit cube.

        Optuna builds an engine and fast-forwards it for every trial (~5 ms for slot 1000, more
        than an NQM trial); the sequence is deterministic, and the rows of one ``random(n)``
        block are the same points (``tests/run/test_trialqueue.py``), so a block is cached, grown
        in powers of two (Sobol's balanced sizes).
        """
        with self._mutex:
            if slot >= len(self._block):
                # imported here: scipy.stats is 0.8 s of a worker's start-up, and a launcher or
                # a worker with nothing left to run samples no point
                import scipy.stats.qmc as qmc_module

                n = max(128, 1 << math.ceil(math.log2(slot + 1)))
                engine = (qmc_module.Halton if self.qmc_type == "halton" else qmc_module.Sobol)(
                    len(self.space), seed=self.seed, scramble=self.scramble)
                self._block = engine.random(n)
            return self._block[slot]

    def point(self, slot: int) -> dict[str, Any]:
        """The params of ``slot``: the sequence's ``slot``-th point, mapped into the space."""
        if not self.space:
            return {}
        return unit_to_params(self.unit_point(slot), self.space)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        """Always the spec's search space."""
        return dict(self.space)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """The trial's slot's point (a trial made outside the work queue: its number's)."""
        if not search_space:
            return {}
        p = self.point(slot_of(trial))
        return {k: p[k] for k in search_space if k in p}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """A random value, seeded from (seed, slot)."""
        return self.fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Pass the call on to the random fallback."""
        self.fallback.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """Pass the call on to the random fallback."""
        self.fallback.after_trial(study, trial, state, values)


def _tpe_maker(options: dict) -> Callable[[int], BaseSampler]:
    """TPE samplers with ``options``; Optuna's warnings about them are shown once, here."""
    TPESampler(seed=0, **options)  # refuses bad options now; warns (deprecated, experimental)

    def make(seed: int) -> BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return TPESampler(seed=seed, **options)

    return make


#: Study user attr of a study with chosen points (``tuner run --adaptive``): ``{"points":
#: {"SLOT": {params}, ...}, "why": {"SLOT": "...", ...}}``, the params those slots run
#: (:class:`ChosenPoints`).
CHOSEN_ATTR = "chosen_points"


class ChosenPoints(BaseSampler):
    """``inner``, except that a slot named in the study's :data:`CHOSEN_ATTR` user attr runs
    the point it names there, in place of the inner sampler's point for that slot (every other
    slot is the inner sampler's, as in any study): points predicted from other batch sizes'
    bests, or around the study's own best, among the spec's search."""

    def __init__(self, inner: BaseSampler) -> None:
        self.inner = inner

    @staticmethod
    def chosen(study: Study, trial: FrozenTrial) -> dict[str, Any] | None:
        """The chosen params ``trial`` runs (None: the inner sampler's)."""
        attr = study.user_attrs.get(CHOSEN_ATTR)
        points = attr.get("points") if isinstance(attr, dict) else None
        point = points.get(str(slot_of(trial))) if isinstance(points, dict) else None
        return dict(point) if isinstance(point, dict) else None

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        """The inner sampler's relative search space."""
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """The chosen point of a slot the study names; else the inner sampler's."""
        warm = self.chosen(study, trial)
        if warm is None:
            return self.inner.sample_relative(study, trial, search_space)
        return {k: warm[k] for k in search_space if k in warm}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """The chosen value of ``param_name`` where there is one; else the inner sampler's."""
        warm = self.chosen(study, trial)
        if warm is not None and param_name in warm:
            return warm[param_name]
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Pass the call on."""
        self.inner.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """Pass the call on."""
        self.inner.after_trial(study, trial, state, values)


def build_sampler(name: str, seed: int, options: dict, space: dict[str, BaseDistribution]
                  ) -> BaseSampler:
    """The sampler named in the spec, seeded (the runner puts a :class:`ChosenPoints` around it,
    which changes nothing in a study that is not warm-started)."""
    if name == "qmc":
        return SlotQMCSampler(space, qmc_type=options.get("qmc_type", "halton"),
                              scramble=options.get("scramble", True), seed=seed)
    if name == "tpe":
        return SlotSampler(seed, _tpe_maker(dict(options)))
    if name == "random":
        return SlotSampler(seed, lambda s: RandomSampler(seed=s))
    raise ValueError(f"unknown sampler {name!r}")
