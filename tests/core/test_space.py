"""Search space <-> Optuna distributions and positions inside ranges."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tuner.core.space import Param


def test_log_position_is_in_log_space() -> None:
    p = Param("learning_rate", low=1e-3, high=10.0, log=True)
    assert p.position(1e-3) == pytest.approx(0.0)
    assert p.position(10.0) == pytest.approx(1.0)
    assert p.position(0.1) == pytest.approx(0.5)
    assert p.distribution() == FloatDistribution(1e-3, 10.0, log=True)


def test_linear_int_and_categorical() -> None:
    assert Param("decay_fraction", low=0.5, high=1.0).position(0.75) == pytest.approx(0.5)
    assert Param("decay_steps", low=10, high=20, integer=True).distribution() == \
        IntDistribution(10, 20)
    c = Param("end_factor", choices=(0.0, 0.01))
    assert c.position(0.0) is None
    assert c.distribution() == CategoricalDistribution((0.0, 0.01))
    assert c.to_attr() == {"choices": [0.0, 0.01]}
