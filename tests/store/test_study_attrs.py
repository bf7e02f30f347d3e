"""The study attrs of the storage contract: tuner.store.storage.study_attrs carries every key
analysis needs (tuner.store.source.STUDY_ATTRS), and `tuner run`'s study creation
(runner.prepare -> create_or_load) stores them, with the spec's values, in a real SQLite file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest

from conftest import SMALL_DIGITS, write
from tuner.run import runner, specs as spec_mod
from tuner.run.pruning import LosslessPruner, build_pruner
from tuner.run.sampling import build_sampler
from tuner.core.space import distributions
from tuner.spec import Spec
from tuner.store.locking import study_lock
from tuner.store.source import STUDY_ATTRS, missing_attrs
from tuner.store.storage import create_or_load, open_storage, study_attrs, study_name

# not the defaults: a seed, a fixed metaparameter and a slack the attrs must carry
TEXT = SMALL_DIGITS.replace("seed = 0", "seed = 3").replace(
    '[optimizer]\nname = "momentum"', '[optimizer]\nname = "momentum"\nweight_decay = 0.0001') \
    + "[pruner]\nslack = 1.5\n"


@pytest.fixture
def spec(tmp_path: Path) -> Spec:
    return spec_mod.load(write(tmp_path, TEXT, "attrs.toml"))


def expected(spec: Spec, b: int) -> dict:
    """study_attrs as stored: through JSON, as Optuna keeps user attrs."""
    return json.loads(json.dumps(study_attrs(spec, b)))


def check_values(attrs: dict, spec: Spec, b: int) -> None:
    """The attrs hold the spec's values (read off the spec, not off study_attrs)."""
    assert attrs["spec_name"] == "attrs" == spec.name and attrs["batch_size"] == b
    assert attrs["seed"] == 3 and attrs["workload"] == "digits"
    assert attrs["workload_options"] == {"hidden": [32], "val_fraction": 0.2, "data_seed": 0}
    assert attrs["optimizer"] == "momentum" and attrs["schedule"] == "constant"
    assert attrs["fixed_params"] == {"weight_decay": 0.0001}
    assert attrs["target"] == {"metric": "error", "value": 0.12, "direction": "minimize"}
    assert attrs["budget"]["max_steps"] == 400 == spec.max_steps(b)
    assert attrs["search_space"] == {
        "learning_rate": {"low": 0.01, "high": 1.0, "log": True},
        "one_minus_momentum": {"low": 0.01, "high": 0.5, "log": True}}
    assert attrs["sampler"]["name"] == "qmc"
    assert attrs["pruner"]["name"] == "lossless" and attrs["pruner"]["slack"] == 1.5
    assert attrs["eval_cadence"]["first_step"] == 5 and attrs["eval_cadence"]["relative"] == 0.05
    assert attrs["eval_cadence"]["n_evals"] == len(spec.eval_steps(b))
    assert attrs["precision"] == spec.precision
    assert attrs["versions"]["optuna"] == optuna.__version__
    assert attrs["spec_file"] == spec.path and attrs["spec_text"] == TEXT
    assert attrs["spec_fingerprint"] == spec.fingerprint()
    assert attrs["spec_identity"] == json.loads(json.dumps(spec.identity(), default=str))


def test_study_attrs_carry_every_key_analysis_reads(spec: Spec) -> None:
    for b in spec.batch_sizes:
        attrs = study_attrs(spec, b)
        assert set(STUDY_ATTRS) <= set(attrs), set(STUDY_ATTRS) - set(attrs)
        assert not missing_attrs(attrs)
        check_values(expected(spec, b), spec, b)
        json.dumps(attrs)  # storable as they are


def test_prepare_stores_them_on_a_sqlite_file(spec: Spec, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    storage, studies = runner.prepare(spec, url, spec.batch_sizes)
    assert sorted(studies) == [16, 128]
    for b, study in studies.items():
        assert study.study_name == study_name(spec, b) == f"attrs.B{b}.seed3"
        assert isinstance(study.pruner, LosslessPruner) and study.pruner.slack == 1.5
    storage.engine.dispose()
    # read back through a fresh connection
    summaries = optuna.get_all_study_summaries(url)
    assert sorted(s.user_attrs["batch_size"] for s in summaries) == [16, 128]
    for s in summaries:
        b = s.user_attrs["batch_size"]
        assert s.study_name == study_name(spec, b) and s.direction.name == "MINIMIZE"
        assert not missing_attrs(s.user_attrs)
        assert s.user_attrs == expected(spec, b)
        check_values(s.user_attrs, spec, b)
    # prepared again (a resumed run): the same studies, nothing rewritten or added
    _, again = runner.prepare(spec, url, spec.batch_sizes)
    assert {b: st._study_id for b, st in again.items()} == {
        b: st._study_id for b, st in studies.items()}
    assert [s.user_attrs for s in optuna.get_all_study_summaries(url)] == [
        s.user_attrs for s in summaries]


def test_create_or_load_completes_a_half_created_study(spec: Spec, tmp_path: Path) -> None:
    # a worker killed while writing the attrs left a study with only the first of them
    url = f"sqlite:///{tmp_path / 'half.db'}"
    storage = open_storage(url)
    name = study_name(spec, 16)
    half = optuna.create_study(storage=storage, study_name=name)
    half.set_user_attr("spec_name", spec.name)
    p, s = spec.pruner, spec.sampler
    with study_lock(url, name):
        study = create_or_load(storage, spec, 16,
                               build_sampler(s.name, s.seed, s.options, distributions(spec.space)),
                               build_pruner(p.name, p.slack, p.lossless, p.options))
    assert study._study_id == half._study_id
    [stored] = optuna.get_all_study_summaries(url)
    assert stored.user_attrs == expected(spec, 16)
    assert dataclasses.asdict(spec.pruner) == stored.user_attrs["pruner"]
