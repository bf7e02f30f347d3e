"""The optimizers and schedules a spec names (tuner/train/optim.py): each trains real digits
through ``tuner run``, its library class gets the spec's metaparameters, and a bad name or
metaparameter is one line and exit status 2 with nothing written."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch

from conftest import SMALL_DIGITS, TRIAL_ATTRS, run_cli, write
from tuner.spec.optimizers import NAMED, SCHEDULE_PARAMS, state_tensors
from tuner.train.optim import (
    build_optimizer,
    build_schedule,
    check,
    constructor_kwargs,
    muon_groups,
    optimizer_class,
    warmup_factor,
)

#: A searched range per optimizer where a few steps of the digits MLP learn something.
LR = {"sgd": (0.05, 0.5), "momentum": (0.05, 0.5), "nesterov": (0.05, 0.5),
      "adam": (1e-3, 1e-2), "adamw": (1e-3, 1e-2), "nadam": (1e-3, 1e-2), "lamb": (1e-3, 3e-2),
      "lars": (1.0, 10.0), "lion": (1e-4, 1e-3), "shampoo": (1e-3, 1e-2),
      "soap": (1e-3, 1e-2), "muon": (1e-2, 5e-2)}


def spec_text(optimizer: str, extra_space: str = "", extra_fixed: str = "",
              schedule: str = "constant") -> str:
    """The small digits spec with another [optimizer] and [search_space]."""
    lo, hi = LR.get(optimizer, (1e-3, 1e-2))
    head, rest = SMALL_DIGITS.split("[optimizer]", 1)
    tail = rest.split("[target]", 1)[1]
    return (f'{head}[optimizer]\nname = "{optimizer}"\nschedule = "{schedule}"\n{extra_fixed}\n'
            f"[search_space]\nlearning_rate = {{ low = {lo}, high = {hi}, log = true }}\n"
            f"{extra_space}\n[target]{tail}").replace("max_steps = 400", "max_steps = 40")


def one_line_exit_2(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.mark.parametrize("name", sorted(NAMED))
def test_each_named_optimizer_trains_digits_through_tuner_run(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = ('adamw_learning_rate = { low = 1e-3, high = 1e-2, log = true }\n'
             if name == "muon" else "")
    if name in ("momentum", "nesterov"):
        space += "one_minus_momentum = { low = 0.01, high = 0.5, log = true }\n"
    spec = write(tmp_path, spec_text(name, space), f"{name}.toml")
    url = f"sqlite:///{tmp_path / 'o.db'}"
    code, _, err = run_cli(["run", str(spec), "--storage", url, "-b", "16", "-n", "2", "-q"],
                           capsys)
    assert code == 0, err
    [summary] = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    assert study.user_attrs["optimizer"] == name
    defaults = {k: v for k, v in NAMED[name].params.items() if v is not None}
    assert study.user_attrs["fixed_params"] == defaults  # the defaults, stored with the study
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        assert set(t.params) == {"learning_rate", *(
            ["adamw_learning_rate"] if name == "muon" else []), *(
            ["one_minus_momentum"] if name in ("momentum", "nesterov") else [])}
        assert TRIAL_ATTRS <= set(t.user_attrs) and not t.user_attrs["diverged"]
        assert math.isfinite(t.user_attrs["best_metric"])


def digits_model() -> torch.nn.Module:
    from workloads.digits import Digits, DigitsOptions

    torch.manual_seed(0)
    return Digits(DigitsOptions(hidden=[32])).build_model()


@pytest.mark.parametrize("name", sorted(NAMED))
def test_each_optimizer_is_its_library_class_and_lowers_the_loss(name: str) -> None:
    from workloads.digits import Digits, DigitsOptions

    data = Digits(DigitsOptions(hidden=[32])).data()
    x, y = data.train_x[:256], data.train_y[:256]
    model = digits_model()
    hp = {k: v for k, v in NAMED[name].params.items() if v is not None}
    hp["learning_rate"] = math.sqrt(LR[name][0] * LR[name][1])
    if name == "muon":
        hp["adamw_learning_rate"] = 3e-3
    if name in ("momentum", "nesterov"):
        hp["one_minus_momentum"] = 0.1
    opt = build_optimizer(name, model, hp)
    assert type(opt) is optimizer_class(name)
    assert opt.param_groups[0]["lr"] == pytest.approx(hp["learning_rate"])
    loss = torch.nn.functional.cross_entropy
    before = loss(model(x), y).item()
    for _ in range(20):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    after = loss(model(x), y).item()
    assert after < before, (name, before, after)


def test_the_batch_science_scales_become_constructor_arguments() -> None:
    kw = constructor_kwargs("adamw", {"learning_rate": 0.01, "one_minus_beta1": 0.1,
                                      "one_minus_beta2": 0.001, "epsilon": 1e-8,
                                      "weight_decay": 0.1, "warmup_fraction": 0.1})
    assert kw == {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}
    kw = constructor_kwargs("nesterov", {"learning_rate": 0.1, "one_minus_momentum": 0.01})
    assert kw == {"nesterov": True, "lr": 0.1, "momentum": pytest.approx(0.99)}
    # a generic optimizer given one beta keeps its constructor's default for the other
    import pytorch_optimizer

    kw = constructor_kwargs("pytorch_optimizer.Lion", {"learning_rate": 1e-4,
                                                       "one_minus_beta2": 0.02},
                            pytorch_optimizer.Lion)
    assert kw["betas"] == pytest.approx((0.9, 0.98))
    opt = build_optimizer("torch.optim.RMSprop", digits_model(),
                          {"learning_rate": 0.01, "alpha": 0.9, "one_minus_momentum": 0.5})
    assert isinstance(opt, torch.optim.RMSprop)
    assert opt.defaults["alpha"] == 0.9 and opt.defaults["momentum"] == 0.5


def test_check_names_the_argument_a_class_does_not_take() -> None:
    for name, named in NAMED.items():  # our table matches the installed libraries
        assert check(name, set(named.params)) is None, name
    assert check("torch.optim.RMSprop", {"learning_rate", "alpha"}) is None
    key, message = check("pytorch_optimizer.Lamb", {"learning_rate", "max_grad_nrom"})
    assert key == "max_grad_nrom" and "takes no argument 'max_grad_nrom'" in message
    assert "learning_rate" in message and "one_minus_beta1/2" in message  # the spec's names
    key, message = check("torch.optim.Adagrad", {"learning_rate", "one_minus_momentum"})
    assert key == "one_minus_momentum"
    assert check("torch.optim.Nope", {"learning_rate"}) == (
        "name", "torch.optim has no optimizer class 'Nope'")


def test_muon_orthogonalises_hidden_matrices_and_leaves_the_rest_to_adamw() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(20, 8), torch.nn.Flatten(),
                                torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                                torch.nn.Linear(32, 32), torch.nn.Linear(32, 5))
    muon, rest = muon_groups(model)
    hidden = {id(model[2].weight), id(model[4].weight)}
    assert muon["use_muon"] and {id(p) for p in muon["params"]} == hidden
    assert not rest["use_muon"]
    assert {id(p) for p in rest["params"]} == {id(p) for p in model.parameters()} - hidden


@pytest.mark.parametrize("schedule", ["warmup_linear", "warmup_cosine"])
def test_warmup_schedules_step_the_learning_rate_as_stated(schedule: str) -> None:
    model = digits_model()
    opt = build_optimizer("sgd", model, {"learning_rate": 0.5})
    hp = {"warmup_fraction": 0.1, "end_factor": 0.2}
    sched = build_schedule(schedule, opt, hp, max_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.05) and lrs[9] == pytest.approx(0.5)  # 10 warmup steps
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.2)  # end_factor at max_steps
    # the decay starts at step 10: at step 10 + 90 t the factor is 1 - 0.8 t, or on the cosine
    # 0.2 + 0.4 (1 + cos(pi t)); half way both are 0.6, a fifth of the way the cosine is above
    assert lrs[55] == pytest.approx(0.5 * 0.6)
    cosine = 0.2 + 0.4 * (1 + math.cos(math.pi * 0.2))
    assert lrs[28] == pytest.approx(0.5 * (cosine if schedule == "warmup_cosine" else 0.84))


def test_warmup_factor_without_warmup_starts_at_the_full_rate() -> None:
    assert warmup_factor(0, 0, 100, 0.0, cosine=True) == 1.0
    assert warmup_factor(100, 0, 100, 0.0, cosine=False) == 0.0


def test_memory_estimate_counts_each_optimizers_state() -> None:
    assert state_tensors("sgd") == 0 and state_tensors("momentum") == 1
    assert state_tensors("adamw") == 2 and state_tensors("soap") > state_tensors("adamw")
    assert state_tensors("torch.optim.RMSprop") == 2


@pytest.mark.parametrize("fixed, space, fragments", [
    ('name = "adagrad"', "", ("optimizer.name", "'adagrad' is not allowed", "lamb",
                              "torch.optim.NAME")),
    ('name = "lars"\none_minus_beta1 = 0.1', "", ("optimizer.one_minus_beta1", "unknown key",
                                                   "trust_coefficient")),
    ('name = "lamb"', "one_minus_momentum = { low = 0.01, high = 0.1 }",
     ("search_space.one_minus_momentum", "unknown key", "one_minus_beta1")),
    ('name = "muon"', "", ("optimizer.adamw_learning_rate", "required")),
    ('name = "adamw"\none_minus_beta1 = 1.5', "", ("optimizer.one_minus_beta1", "outside")),
    ('name = "lamb"\nschedule = "warmup_cosine"', "",
     ("optimizer.warmup_fraction", "required")),
    ('name = "lamb"\nschedule = "warmup_cosine"\nwarmup_fraction = 1.0', "",
     ("optimizer.warmup_fraction", "outside [0, 1)")),
    ('name = "pytorch_optimizer.Lamb"\nmax_grad_nrom = 1.0', "",
     ("optimizer.max_grad_nrom", "pytorch_optimizer.Lamb takes no argument")),
    ('name = "pytorch_optimizer.Lamb"', "trust = { low = 0.1, high = 1.0 }",
     ("search_space.trust", "takes no argument 'trust'")),
    ('name = "torch.optim.Nope"', "", ("optimizer.name", "no optimizer class 'Nope'")),
    ('name = "torch.optim.Adam"\nend_factor = 0.1', "", ("optimizer.end_factor",
                                                       "belongs to schedule linear_decay")),
    ('name = "torch.optim.Adam"\n"bad key" = 1', "", ("optimizer.bad key",
                                                       "not a constructor argument")),
])
def test_bad_optimizer_is_one_line_exit_2_nothing_written(
        fixed: str, space: str, fragments: tuple[str, ...], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    text = SMALL_DIGITS.replace('name = "momentum"', fixed).replace(
        "one_minus_momentum = { low = 0.01, high = 0.5, log = true }", space)
    spec = write(tmp_path, text)
    db = tmp_path / "nothing.db"
    one_line_exit_2(*run_cli(["run", str(spec), "--storage", f"sqlite:///{db}"], capsys),
                    *fragments)
    assert not db.exists()


def test_every_schedule_param_is_bounded() -> None:
    from tuner.core.space import PARAM_BOUNDS

    for params in SCHEDULE_PARAMS.values():
        assert set(params) <= set(PARAM_BOUNDS)
    for named in NAMED.values():
        assert set(named.params) <= set(PARAM_BOUNDS)
