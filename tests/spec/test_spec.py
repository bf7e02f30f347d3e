"""Spec validation: every invalid spec is one line naming file and key, exit 2, no storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SMALL_DIGITS, run_cli, write
from tuner.run import specs as spec_mod
from tuner.core.errors import SpecError


#: The repository's studies/ folder (not the working directory's: pytest may run elsewhere).
STUDIES = Path(__file__).parents[2] / "studies"
#: Every spec shipped in studies/ -> its workload.
SHIPPED = {
    "digits_mlp": "digits", "fashion_mnist_cnn": "fashion_mnist",
    "fashion_mnist_mlp": "fashion_mnist", "nqm_momentum": "nqm", "nqm_momentum_ema": "nqm",
    "nqm_precond_p025": "nqm", "nqm_precond_p050": "nqm", "nqm_precond_p075": "nqm",
    "nqm_sgd": "nqm",
}


def shipped_specs() -> list[Path]:
    """The spec files in studies/, studies/optimizers/ and studies/controls/: at least the
    known shipped ones."""
    paths = sorted(STUDIES.glob("*.toml")) + sorted(STUDIES.glob("optimizers/*.toml")) + \
        sorted(STUDIES.glob("controls/*.toml"))
    assert {"fashion_mnist_mlp_datasize", "fmnist_datasize_small"} <= {p.stem for p in paths}
    optimizers = {p.stem for p in paths if p.parent.name == "optimizers"}
    assert {f"fmnist_small_{o}" for o in ("sgd", "momentum", "adamw", "lamb", "muon")} <= (
        optimizers), optimizers
    assert set(SHIPPED) <= {p.stem for p in paths}, (STUDIES, [p.name for p in paths])
    return paths


def test_shipped_specs_parse() -> None:
    import workloads

    paths = shipped_specs()
    for s in (m for path in paths for m in spec_mod.load_series(path)):  # as `tuner run` does
        path = Path(s.path)
        assert s.name == path.stem if s.series is None else s.name.startswith(path.stem + ".")
        if path.stem in SHIPPED:
            assert s.workload_name == SHIPPED[path.stem]
        assert isinstance(s.workload, workloads.get(s.workload_name))
        assert s.batch_sizes == tuple(sorted(s.batch_sizes))
        for b in s.batch_sizes:
            steps = s.eval_steps(b)
            assert steps[-1] == s.max_steps(b)


def test_small_spec_is_typed(small_spec: Path) -> None:
    s = spec_mod.load(small_spec)
    assert s.name == "small_digits"
    assert s.optimizer == "momentum" and s.schedule == "constant"
    assert [p.name for p in s.space] == ["learning_rate", "one_minus_momentum"]
    assert s.fixed == {"weight_decay": 0.0}
    assert s.target.direction == "minimize"  # the workload's natural direction for "error"
    assert s.sampler.name == "qmc" and s.pruner.name == "lossless" and s.pruner.slack == 1.0


def replace(old: str, new: str) -> str:
    assert old in SMALL_DIGITS, old
    return SMALL_DIGITS.replace(old, new)


# (spec text, the key the message must name, a fragment of what is allowed)
INVALID = {
    "unknown_top_key": ("colour = 'red'\n" + SMALL_DIGITS, "colour", "allowed:"),
    "unknown_nested_key": (replace("[target]\n", "[target]\nmetrik = 'x'\n"), "target.metrik",
                           "allowed: metric, value, direction"),
    "unknown_param": (replace("[search_space]\n", "[search_space]\nbeta = {low=1, high=2}\n"),
                      "search_space.beta", "allowed: learning_rate, one_minus_momentum"),
    "wrong_type": (replace("max_steps = 400", "max_steps = '400'"), "budget.max_steps",
                   "must be integer"),
    "wrong_type_bool_as_int": (replace("trials = 4", "trials = true"), "trials",
                               "must be integer"),
    "zero_batch_size": (replace("[16, 128]", "[0, 128]"), "batch_sizes", "positive"),
    "negative_batch_size": (replace("[16, 128]", "[-16, 128]"), "batch_sizes", "positive"),
    "empty_range": (replace("low = 0.01, high = 1.0", "low = 0.5, high = 0.5"),
                    "search_space.learning_rate.high", "low < high"),
    "inverted_range": (replace("low = 0.01, high = 1.0", "low = 1.0, high = 0.01"),
                       "search_space.learning_rate.high", "low < high"),
    "log_range_touching_zero": (
        replace("[search_space]\n", "[search_space]\nweight_decay = {low=0.0, high=0.1, "
                "log=true}\n"), "search_space.weight_decay.low", "log range needs low > 0"),
    "unknown_metric": (replace('metric = "error"', 'metric = "bleu"'), "target.metric",
                       "allowed: error, accuracy, loss"),
    "budget_too_small": (replace("max_steps = 400", "max_steps = 3"), "budget",
                         "first evaluation"),
    "unknown_optimizer": (replace('name = "momentum"', 'name = "adagrad"'), "optimizer.name",
                          "allowed: sgd, momentum, nesterov, adam"),
    "missing_momentum": (replace("one_minus_momentum = { low = 0.01, high = 0.5, log = true }",
                                 ""), "optimizer.one_minus_momentum", "search it"),
    "unknown_workload": (replace('name = "digits"', 'name = "imagenet"'), "workload.name",
                         "allowed: digits, fashion_mnist"),
    "unknown_workload_option": (replace("hidden = [32]", "hidden = [32]\ndepth = 3"),
                                "workload.depth", "allowed: name, hidden"),
    "slack_below_one": (SMALL_DIGITS + "[pruner]\nslack = 0.5\n", "pruner.slack", ">= 1"),
    "not_toml": ("seed = = 1\n", "", "not valid TOML"),
    "max_share_not_a_fraction": (replace("min_interval = 5", "min_interval = 5\nmax_share = 1.5"),
                                 "eval.max_share", "a fraction in [0.001, 1)"),
    "max_share_tiny": (replace("min_interval = 5", "min_interval = 5\nmax_share = 1e-320"),
                       "eval.max_share", "a fraction in [0.001, 1)"),
    "max_share_not_a_number": (replace("min_interval = 5", "min_interval = 5\nmax_share = 'x'"),
                               "eval.max_share", "must be number"),
    # seeds numpy would refuse at the first trial
    "seed_negative": (replace("seed = 0", "seed = -1"), "seed", "[0, 2^32 - 1]"),
    "seed_too_big": (replace("seed = 0", "seed = 4294967296"), "seed", "[0, 2^32 - 1]"),
    "sampler_seed_too_big": (SMALL_DIGITS + "[sampler]\nseed = 99999999999\n", "sampler.seed",
                             "[0, 2^32 - 1]"),
    # sampler and pruner options Optuna checks only when it builds them (or never)
    "tpe_negative_startup": (SMALL_DIGITS + "[sampler]\nname = 'tpe'\nn_startup_trials = -3\n",
                             "sampler.n_startup_trials", ">= 0"),
    "pruner_option_out_of_range": (
        SMALL_DIGITS + "[pruner]\nname = 'median'\noptions = { n_warmup_steps = -1 }\n",
        "pruner.options", "cannot be negative"),
    "pruner_option_wrong_type": (
        SMALL_DIGITS + "[pruner]\nname = 'median'\noptions = { n_warmup_steps = 'a' }\n",
        "pruner.options.n_warmup_steps", "must be integer"),
    "pruner_option_missing": (SMALL_DIGITS + "[pruner]\nname = 'percentile'\n",
                              "pruner.options.percentile", "required by Optuna's PercentilePruner"),
    "pruner_percentile_200": (
        SMALL_DIGITS + "[pruner]\nname = 'percentile'\noptions = { percentile = 200.0 }\n",
        "pruner.options", "between 0 and 100"),
    "pruner_reduction_factor_1": (
        SMALL_DIGITS + "[pruner]\nname = 'successive_halving'\n"
        "options = { reduction_factor = 1 }\n", "pruner.options", "reduction_factor >= 2"),
    "pruner_string_not_auto": (
        SMALL_DIGITS + "[pruner]\nname = 'hyperband'\noptions = { max_resource = 'x' }\n",
        "pruner.options.max_resource", "must be 'auto' or integer"),
    "pruner_options_not_a_table": (SMALL_DIGITS + "[pruner]\nname = 'median'\noptions = 3\n",
                                   "pruner.options", "must be a table"),
    # numeric overflow and storage limits in the budget and cadence
    "max_steps_beyond_int32": (replace("max_steps = 400", "max_steps = 100000000000000000000"),
                               "budget", "at most 2147483647"),
    "min_steps_beyond_int32": (replace("max_steps = 400", "max_steps = 400\n"
                                       "min_steps = 100000000000"), "budget", "at most 2147483647"),
    "max_epochs_overflow": (replace("max_steps = 400", "max_epochs = 1e300"), "budget",
                            "at most 2147483647"),
    "scaling_power_overflow": (replace("max_steps = 400", "max_steps = 400\n"
                                       "reference_batch_size = 128\nscaling_power = 1e300"),
                               "budget", "gives an overflow at batch size 16"),
    "relative_overflow": (replace("relative = 0.05", "relative = 1e308"), "eval.relative",
                          "[0, 1000]"),
    # targets outside the metric's range, or met before the first step
    "error_target_negative": (replace("value = 0.12", "value = -0.1"), "target.value",
                              "allowed: a target in [0, 1]"),
    "error_target_above_one": (replace("value = 0.12", "value = 2.0"), "target.value",
                               "allowed: a target in [0, 1]"),
    "accuracy_target_above_one": (replace('metric = "error"\nvalue = 0.12',
                                          'metric = "accuracy"\nvalue = 1.5'), "target.value",
                                  "allowed: a target in [0, 1]"),
    "loss_target_negative": (replace('metric = "error"\nvalue = 0.12',
                                     'metric = "loss"\nvalue = -1.0'), "target.value",
                             "allowed: a target in [0, inf]"),
    "error_target_at_chance": (replace("value = 0.12", "value = 0.95"), "target.value",
                               "already met at initialisation"),
    "accuracy_target_at_chance": (replace('metric = "error"\nvalue = 0.12',
                                          'metric = "accuracy"\nvalue = 0.1'), "target.value",
                                  "allowed: a target above 0.1"),
    "nqm_target_above_initial_loss": (
        (STUDIES / "nqm_sgd.toml").read_text().replace("value = 0.01", "value = 5.0"),
        "target.value", "allowed: a target below 4.894"),
    "name_too_long": (replace("seed = 0", "name = '" + "a" * 300 + "'\nseed = 0"), "name",
                      "at most 200"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_spec_is_one_line_exit_2_and_no_storage(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, key, allowed = INVALID[case]
    path = write(tmp_path, text, "bad.toml")
    db = tmp_path / "x.db"
    code, out, err = run_cli(["run", str(path), "--storage", f"sqlite:///{db}"], capsys)
    print(err)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0]
    assert f": {key}:" in lines[0] if key else True
    assert allowed in lines[0]
    assert not db.exists()
    assert out == ""


def test_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot read" in err


@pytest.mark.parametrize("kind", ["png", "latin1", "directory", "missing"])
def test_unreadable_spec_file_is_one_line(kind: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    if kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    elif kind == "latin1":
        path.write_bytes(SMALL_DIGITS.replace("seed = 0", "description = 'caf\xe9'\nseed = 0")
                         .encode("latin-1"))
    elif kind == "directory":
        path.mkdir()
    db = tmp_path / "x.db"
    code, out, err = run_cli(["run", str(path), "--storage", f"sqlite:///{db}"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {path}: ") and "allowed: a TOML file" in err
    assert ("not UTF-8" in err) == (kind in ("png", "latin1"))
    assert not db.exists()


def test_epochs_budget_converts_per_batch_size(tmp_path: Path) -> None:
    s = spec_mod.parse(
        __import__("tomllib").loads(replace("max_steps = 400", "max_epochs = 2")), "x.toml")
    n = s.workload.num_train_examples()
    assert s.max_steps(16) == -(-2 * n // 16)
    assert s.max_steps(128) == -(-2 * n // 128)


def test_budget_rule_in_batch_size() -> None:
    import tomllib

    text = replace("max_steps = 400", "max_steps = 400\nreference_batch_size = 16\n"
                   "scaling_power = 1.0\nmin_steps = 60")
    s = spec_mod.parse(tomllib.loads(text), "x.toml")
    assert s.max_steps(16) == 400
    assert s.max_steps(128) == 60  # 400 * 16/128 = 50, raised to min_steps
    assert "reference" not in s.budget.rule() and "16 / B" in s.budget.rule()


def test_linear_decay_needs_end_factor() -> None:
    import tomllib

    text = replace('name = "momentum"', 'name = "momentum"\nschedule = "linear_decay"')
    with pytest.raises(SpecError, match="optimizer.end_factor"):
        spec_mod.parse(tomllib.loads(text), "x.toml")
    ok = spec_mod.parse(tomllib.loads(text.replace(
        "[search_space]\n", "[search_space]\nend_factor = {low = 0.001, high = 0.5, log = true}\n"
    )), "x.toml")
    assert ok.fixed["decay_fraction"] == 1.0


def test_fixed_and_searched_is_an_error() -> None:
    import tomllib

    text = replace('name = "momentum"', 'name = "momentum"\nlearning_rate = 0.1')
    with pytest.raises(SpecError, match="either searched or fixed"):
        spec_mod.parse(tomllib.loads(text), "x.toml")


def test_optuna_pruner_with_maximised_metric_is_refused() -> None:
    import tomllib

    text = replace('metric = "error"\nvalue = 0.12', 'metric = "accuracy"\nvalue = 0.88')
    text += '[pruner]\nname = "median"\n'
    with pytest.raises(SpecError, match="pruner.name"):
        spec_mod.parse(tomllib.loads(text), "x.toml")
    # Unknown options of an Optuna pruner are named too.
    text2 = SMALL_DIGITS + '[pruner]\nname = "median"\noptions = { n_warmup = 3 }\n'
    with pytest.raises(SpecError, match="pruner.options.n_warmup: unknown key"):
        spec_mod.parse(tomllib.loads(text2), "x.toml")


def test_fingerprint_ignores_trials_but_not_search_space() -> None:
    import tomllib

    a = spec_mod.parse(tomllib.loads(SMALL_DIGITS), "x.toml")
    b = spec_mod.parse(tomllib.loads(replace("trials = 4", "trials = 9")), "x.toml")
    c = spec_mod.parse(tomllib.loads(replace("high = 1.0", "high = 2.0")), "x.toml")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_max_share_spaces_evaluations_and_keeps_old_fingerprints() -> None:
    import tomllib

    from tuner.spec.cadence import share_interval
    from tuner.store.storage import study_attrs

    plain = spec_mod.parse(tomllib.loads(SMALL_DIGITS), "x.toml")
    # Studies stored before max_share existed keep their fingerprint (it is left out when unset).
    assert "max_share" not in plain.identity()["eval_cadence"]
    text = replace("min_interval = 5", "min_interval = 5\nmax_share = 0.05")
    shared = spec_mod.parse(tomllib.loads(text), "x.toml")
    assert shared.fingerprint() != plain.fingerprint()
    val = shared.workload.num_val_examples()
    assert val == 359  # digits: 20 % of 1,797 images
    for b in shared.batch_sizes:
        floor = share_interval(val, b, 0.05)
        steps = shared.eval_steps(b)
        assert floor > 5 and steps[0] == floor and steps[-1] == shared.max_steps(b)
        assert all(later - s >= floor for s, later in zip(steps[:-2], steps[1:-1]))
        assert len(steps) < len(plain.eval_steps(b))
        # the study records the resolution it really has
        cadence = study_attrs(shared, b)["eval_cadence"]
        assert cadence["min_interval_here"] == floor
        assert f"max({floor}, 5%)" in cadence["resolution"]


def test_max_share_needs_a_validation_pass(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    text = (STUDIES / "nqm_sgd.toml").read_text().replace("[eval]", "[eval]\nmax_share = 0.05")
    path = write(tmp_path, text, "nqm.toml")
    code, out, err = run_cli(["run", str(path), "--storage", f"sqlite:///{tmp_path / 'x.db'}"],
                             capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"{path}: eval.max_share: " in err and "only for trained workloads" in err
    assert not (tmp_path / "x.db").exists()


GOOD_PLUGIN = """\
from dataclasses import dataclass
import torch
from tuner.workload import Data, TrainedWorkload

@dataclass
class Options:
    width: int = 8

class Tiny(TrainedWorkload):
    name = "tiny"
    Options = Options
    num_classes = 2

    def num_train_examples(self):
        return 64

    def load_data(self):
        x = torch.randn(96, 4, generator=torch.Generator().manual_seed(0))
        y = (x[:, 0] > 0).long()
        return Data(x[:64], y[:64], x[64:], y[64:])

    def build_model(self):
        return torch.nn.Linear(4, 2)
"""

# module source, class, the key the message names, a fragment of the message
PLUGINS = {
    "syntax_error": ("def broken(:\n", "X", "workload.name", "SyntaxError: invalid syntax ("),
    "missing_dependency": ("import no_such_dependency_xyz\n", "X", "workload.name",
                           "No module named 'no_such_dependency_xyz'"),
    "raises_at_import": ("raise RuntimeError('boom at import')\n", "X", "workload.name",
                         "RuntimeError: boom at import"),
    "abstract": ("from tuner.workload import TrainedWorkload\n"
                 "class Half(TrainedWorkload):\n    def num_train_examples(self):\n"
                 "        return 10\n", "Half", "workload.name",
                 "is abstract: it does not implement build_model, load_data"),
    "dict_option": (GOOD_PLUGIN.replace("width: int = 8", "sizes: dict = None"), "Tiny",
                    "workload.sizes", "has type dict, which a spec cannot express"),
    "optional_option": (GOOD_PLUGIN.replace("width: int = 8", "width: int | None = None"), "Tiny",
                        "workload.width", "which a spec cannot express; allowed field types: int"),
    "options_not_dataclass": (GOOD_PLUGIN.replace("@dataclass\n", ""), "Tiny", "workload.name",
                              "is not a dataclass"),
    "unresolvable_annotation": (GOOD_PLUGIN.replace("width: int = 8", "width: 'Undefined' = 8"),
                                "Tiny", "workload.name", "cannot resolve the types"),
    "required_option_not_given": (GOOD_PLUGIN.replace("width: int = 8", "width: int"), "Tiny",
                                  "workload.width", "required (integer)"),
    "not_a_workload": ("class X:\n    pass\n", "X", "workload.name",
                       "is not a tuner.workload.Workload subclass"),
    "no_such_class": (GOOD_PLUGIN, "Nope", "workload.name", "has no attribute 'Nope'"),
    "raises_in_constructor": (GOOD_PLUGIN + "    def __init__(self, options=None):\n"
                              "        raise ValueError('no GPU driver')\n", "Tiny",
                              "workload.name", "failed to start: ValueError: no GPU driver"),
}


@pytest.mark.parametrize("case", sorted(PLUGINS))
def test_broken_plugin_workload_is_one_line(case: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    source, cls, key, fragment = PLUGINS[case]
    module = f"plugin_{case}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    text = replace('name = "digits"\nhidden = [32]', f'name = "{module}:{cls}"')
    path = write(tmp_path, text.replace("value = 0.12", "value = 0.3"), "bad.toml")
    db = tmp_path / "x.db"
    code, out, err = run_cli(["run", str(path), "--storage", f"sqlite:///{db}"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert f"{path}: {key}: " in err and fragment in err, err
    assert not db.exists()


def test_good_plugin_workload_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plugin_good.py").write_text(GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    text = replace('name = "digits"\nhidden = [32]', 'name = "plugin_good:Tiny"\nwidth = 4')
    path = write(tmp_path, text.replace("value = 0.12", "value = 0.3"), "good.toml")
    code, out, err = run_cli(["run", str(path), "--storage", f"sqlite:///{tmp_path / 'x.db'}",
                              "-n", "1", "-b", "16", "-q"], capsys)
    assert code == 0, err
    assert "batch_size" in out


def test_evaluation_count_matches_the_cadence() -> None:
    import dataclasses

    from tuner.run.resources import count_evals

    for s in (m for path in shipped_specs() for m in spec_mod.load_series(path)):
        for b in s.batch_sizes:
            assert count_evals(s, b, 10**6) == len(s.eval_steps(b))
    s = spec_mod.load(STUDIES / "digits_mlp.toml")
    for first, relative, interval in [(1, 0.0, 1), (5, 0.05, 5), (3, 0.5, 2), (1, 1.0, 1)]:
        for max_steps in [3, 10, 57, 1000]:
            t = dataclasses.replace(s, cadence=dataclasses.replace(
                s.cadence, first_step=first, relative=relative, min_interval=interval),
                budget=dataclasses.replace(s.budget, max_steps=max_steps))
            assert count_evals(t, 8, 10**6) == len(t.eval_steps(8))
    assert count_evals(t, 8, 5) == 6  # counting stops past the limit
