"""The NQM beside a trained comparison (tuner/analysis/families.py): optimizer families, ratios
to the same side's SGD, and the report section, on real NQM and digits studies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SMALL_DIGITS, SMALL_NQM, report_page, run_cli, write
from procs import run
from tuner.analysis.families import compare, family
from tuner.analysis.records import SpecStudies

MOMENTUM_SPACE = "one_minus_momentum = { low = 0.01, high = 0.5, log = true }\n"


def studies_of(workload: str, optimizer: str, **options: object) -> SpecStudies:
    return SpecStudies("s", 0, {}, [], attrs={"workload": workload, "optimizer": optimizer,
                                              "workload_options": options})


@pytest.mark.parametrize("workload, optimizer, options, want", [
    ("nqm", "sgd", {}, "sgd"),
    ("nqm", "momentum", {}, "momentum"),
    ("nqm", "sgd", {"precondition_power": 0.5}, "preconditioned (p = 0.5)"),
    ("nqm", "momentum", {"ema": 0.99}, "momentum + EMA"),
    ("digits", "nesterov", {}, "momentum"),
    ("fashion_mnist", "adamw", {}, "preconditioned"),
    ("fashion_mnist", "soap", {}, "preconditioned"),
    ("fashion_mnist", "muon", {}, "muon"),
    ("fashion_mnist", "torch.optim.RMSprop", {}, "torch.optim.RMSprop"),
])
def test_family(workload: str, optimizer: str, options: dict, want: str) -> None:
    assert family(studies_of(workload, optimizer, **options)) == want


@pytest.fixture(scope="module")
def model_and_measurement(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    """Real studies: the NQM's SGD and momentum, and digits trained with SGD and momentum,
    three or more batch sizes each (enough for a fit)."""
    d = tmp_path_factory.mktemp("fam")
    url = f"sqlite:///{d / 'f.db'}"
    nqm = SMALL_NQM.replace("batch_sizes = [16, 1024]", "batch_sizes = [4, 16, 64, 256, 1024]")
    digits = SMALL_DIGITS.replace("batch_sizes = [16, 128]", "batch_sizes = [16, 32, 64]")
    specs = [
        write(d, nqm.replace('name = "momentum"', 'name = "sgd"').replace(
            "one_minus_momentum = { low = 1e-3, high = 1.0, log = true }\n", ""), "m_sgd.toml"),
        write(d, nqm, "m_momentum.toml"),
        write(d, digits.replace('name = "momentum"', 'name = "sgd"').replace(MOMENTUM_SPACE, ""),
              "t_sgd.toml"),
        write(d, digits, "t_momentum.toml"),
    ]
    for spec in specs:
        done = run(["run", str(spec), "--storage", url, "-q", "--no-summary"])
        assert done.returncode == 0, done.stderr[-2000:]
    return url, specs


def test_ratios_are_to_the_same_sides_sgd(model_and_measurement: tuple[str, list[Path]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tuner.analysis.summary import spec_curve
    from tuner.store.rows import open_reader
    from tuner.store.source import load

    url, specs = model_and_measurement
    code, out, err = run_cli(["curve", *map(str, specs), "--storage", url, "--format", "json",
                              "--n-boot", "0"], capsys)
    assert code == 0, err
    fits = {c["spec"]: c["fit"] for c in json.loads(out)}
    assert all(fits.values()), fits
    reader = open_reader(url)
    loaded = [load(reader, p.stem, None) for p in specs]
    comp = compare(loaded, [spec_curve(s, 0) for s in loaded])
    assert comp is not None and comp.measured_workload == "digits"
    assert [s.family for s in comp.model] == ["sgd", "momentum"]
    header, rows = comp.rows()
    by_family = {r[0]: dict(zip(header, r)) for r in rows}
    assert set(by_family) == {"sgd", "momentum"}
    assert by_family["sgd"]["model B_crit/SGD"] == 1.0
    assert by_family["sgd"]["measured B_crit/SGD"] == 1.0
    mom = by_family["momentum"]
    assert mom["model spec"] == "m_momentum" and mom["measured spec"] == "t_momentum"
    assert mom["model B_crit/SGD"] == pytest.approx(
        fits["m_momentum"]["b_crit"] / fits["m_sgd"]["b_crit"])
    assert mom["measured S_min/SGD"] == pytest.approx(
        fits["t_momentum"]["s_min"] / fits["t_sgd"]["s_min"])
    # trained specs of two workloads, or no NQM spec: no side-by-side
    assert compare(loaded[2:], [spec_curve(s, 0) for s in loaded[2:]]) is None


def test_report_shows_the_model_beside_the_measurement(
        model_and_measurement: tuple[str, list[Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    url, specs = model_and_measurement
    page = report_page(specs, url, tmp_path / "r", capsys)
    assert "<h2>Model vs measurement" in page and 'alt="model vs measurement"' in page
    assert "model B_crit/SGD" in page
    # and the digits pair, on one workload and target, gets its performance profile
    assert "<h2>Performance profiles: digits (" in page
