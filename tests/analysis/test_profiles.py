"""Performance profiles (tuner/analysis/profiles.py): the ratios, fractions and score by hand,
and `tuner profile` / `tuner report` on real NQM studies of two optimizers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import SMALL_NQM, report_page, run_cli, write
from procs import run
from tuner.analysis.curves import Curve, Point
from tuner.analysis.profiles import profile, profile_rows


def curve_of(name: str, steps: dict[int, int | None]) -> Curve:
    return Curve(name, {"metric": "loss", "value": 0.01, "direction": "minimize"}, "sgd",
                 [Point(b, s, 0 if s else None) for b, s in steps.items()])


def test_ratios_fractions_and_score_by_hand() -> None:
    a = curve_of("a", {16: 100, 32: 60, 64: 40, 128: None, 256: None})
    b = curve_of("b", {16: 150, 32: 60, 64: 20, 128: 30, 256: None})
    c = curve_of("c", {16: 100, 32: 50, 64: 20})
    prof = profile([a, b, c])
    assert prof.batch_sizes == [16, 32, 64]  # 128, 256: not studied by c
    assert prof.left_out == {128: "not studied by c", 256: "not studied by c"}
    assert prof.ratios["a"] == {16: 1.0, 32: 1.2, 64: 2.0}
    assert prof.ratios["b"] == {16: 1.5, 32: 1.2, 64: 1.0}
    assert prof.ratios["c"] == {16: 1.0, 32: 1.0, 64: 1.0}
    assert prof.fraction("a", 1.0) == pytest.approx(1 / 3)
    assert prof.fraction("a", 1.2) == pytest.approx(2 / 3)  # a ratio equal to tau counts
    assert prof.fraction("a", 1.99) == pytest.approx(2 / 3)
    assert prof.fraction("a", 2.0) == 1.0
    # score: mean over B of (4 - ratio) / 3
    assert prof.score("a") == pytest.approx(((4 - 1) + (4 - 1.2) + (4 - 2)) / 9)
    assert prof.score("c") == 1.0
    assert prof.wins("b") == 1 and prof.wins("c") == 3


def test_a_batch_size_never_reached_counts_as_a_miss_unless_nobody_reached() -> None:
    a = curve_of("a", {16: 100, 32: None, 64: None})
    b = curve_of("b", {16: 500, 32: 80, 64: None})
    prof = profile([a, b])
    assert prof.batch_sizes == [16, 32]
    assert prof.left_out == {64: "no spec reached the target"}
    assert prof.ratios["a"][32] == math.inf
    assert prof.fraction("a", 4.0) == 0.5 and prof.score("a") == pytest.approx(0.5)
    assert prof.ratios["b"][16] == 5.0 and prof.score("b") == pytest.approx(0.5)
    header, rows = profile_rows(prof)
    assert header[0] == "spec" and rows[0][-1] == "1/2"


def test_one_curve_or_nothing_in_common_is_no_profile() -> None:
    assert profile([curve_of("a", {16: 1})]) is None
    assert profile([curve_of("a", {16: 1}), curve_of("b", {32: 1})]) is None


@pytest.fixture(scope="module")
def two_optimizers(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    """Real NQM studies of SGD and momentum on the same problem and target."""
    d = tmp_path_factory.mktemp("prof")
    url = f"sqlite:///{d / 'p.db'}"
    sgd = write(d, SMALL_NQM.replace('name = "momentum"', 'name = "sgd"').replace(
        "one_minus_momentum = { low = 1e-3, high = 1.0, log = true }\n", ""), "nqm_sgd.toml")
    mom = write(d, SMALL_NQM, "nqm_mom.toml")
    for spec in (sgd, mom):
        done = run(["run", str(spec), "--storage", url, "-q", "--no-summary"])
        assert done.returncode == 0, done.stderr[-2000:]
    return url, [sgd, mom]


def test_profile_command_matches_the_curves(two_optimizers: tuple[str, list[Path]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    url, specs = two_optimizers
    code, out, err = run_cli(["profile", *map(str, specs), "--storage", url, "--format",
                              "json"], capsys)
    assert code == 0, err
    [prof] = json.loads(out)
    code, out, err = run_cli(["curve", *map(str, specs), "--storage", url, "--format", "json",
                              "--n-boot", "0"], capsys)
    curves = {c["spec"]: {p["batch_size"]: p["best_steps"] for p in c["points"]}
              for c in json.loads(out)}
    for b in prof["batch_sizes"]:
        best = min(s[b] for s in curves.values() if s[b] is not None)
        for name, steps in curves.items():
            want = None if steps[b] is None else steps[b] / best
            assert prof["ratios"][name][str(b)] == pytest.approx(want)
    assert prof["comparison"].startswith("nqm (") and "loss <= 0.01" in prof["comparison"]
    code, out, _ = run_cli(["profile", *map(str, specs), "--storage", url], capsys)
    assert code == 0 and "tau<=1.25" in out and "nqm_sgd" in out and "nqm_mom" in out


def test_profile_of_one_spec_is_one_line_exit_2(two_optimizers: tuple[str, list[Path]],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    url, specs = two_optimizers
    code, out, err = run_cli(["profile", str(specs[0]), "--storage", url], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "two or more specs on the same workload" in err


def test_report_has_the_profile_section(two_optimizers: tuple[str, list[Path]], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url, specs = two_optimizers
    page = report_page(specs, url, tmp_path / "r", capsys)
    assert "<h2>Performance profiles: nqm (" in page and "score" in page
    assert page.count('alt="performance profiles"') == 1
