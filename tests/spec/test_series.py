"""``[series]``: one spec file, one spec per value (tuner/spec/series.py), run and analysed as
its members through the real CLI on the NQM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SMALL_NQM, run_cli, write
from tuner import spec as spec_mod
from tuner.core.errors import SpecError

SERIES = SMALL_NQM.replace("batch_sizes = [16, 1024]", "batch_sizes = [16, 64, 256, 1024]") \
    .replace("[optimizer]", '[series]\n"workload.dimensions" = [100, 1000, 3000]\n\n[optimizer]')


def test_a_series_expands_into_one_named_spec_per_value(tmp_path: Path) -> None:
    path = write(tmp_path, SERIES, "dims.toml")
    members = spec_mod.load_series(path)
    assert [m.name for m in members] == ["dims.dimensions100", "dims.dimensions1000",
                                         "dims.dimensions3000"]
    assert [m.workload_options["dimensions"] for m in members] == [100, 1000, 3000]
    assert [m.series.value for m in members] == [100, 1000, 3000]
    assert {m.series.key for m in members} == {"workload.dimensions"}
    assert len({m.fingerprint() for m in members}) == 3  # their own studies
    assert [s.name for s in spec_mod.load_series(write(tmp_path, SMALL_NQM))] == ["spec"]
    with pytest.raises(SpecError, match="declares a series of 3 specs"):
        spec_mod.load(path)


@pytest.mark.parametrize("series, key, what", [
    ('"dimensions" = [1, 2]', "series.dimensions", "allowed: one entry"),
    ('"model.width" = [1, 2]', "series.model.width", "allowed: one entry"),
    ('"workload.dimensions" = [100]', "series.workload.dimensions", "at least 2"),
    ('"workload.dimensions" = [100, 100]', "series.workload.dimensions", "repeat"),
    ('"workload.dimensions" = [100, true]', "series.workload.dimensions", "True"),
    ('"workload.dimensions" = [100, -5]', "series[dimensions=-5].workload.dimensions", ""),
    ('"workload.colour" = [1, 2]', "series[colour=1].workload", "colour"),
])
def test_bad_series_name_the_key(tmp_path: Path, series: str, key: str, what: str) -> None:
    text = SERIES.replace('"workload.dimensions" = [100, 1000, 3000]', series)
    path = write(tmp_path, text, "bad.toml")
    from tuner.run import specs as run_specs

    with pytest.raises(SpecError) as info:
        run_specs.load_series(path)  # with the workload: member values are checked too
    assert info.value.key.startswith(key), str(info.value)
    assert what in str(info.value)


def test_series_run_curve_and_report(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, SERIES, "dims.toml")
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    code, out, err = run_cli(["run", str(path), "--storage", url, "-q"], capsys)
    assert code == 0, err
    assert out.count("batch_size") == 3  # one summary table per member
    code, out, err = run_cli(["curve", str(path), "--storage", url, "--n-boot", "50",
                              "--series-plot", str(tmp_path / "s.png")], capsys)
    assert code == 0, err
    assert "series dims at loss<=0.01" in out
    for m in ("dims.dimensions100", "dims.dimensions1000", "dims.dimensions3000"):
        assert m in out
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    # by the series' stored name too (no file), members in value order
    code, out, err = run_cli(["curve", "dims", "--storage", url, "--format", "json",
                              "--n-boot", "0"], capsys)
    assert code == 0, err
    objs = json.loads(out)
    assert [o["series"]["value"] for o in objs] == [100, 1000, 3000]
    assert all(o["series"]["key"] == "workload.dimensions" for o in objs)
    # the NQM's plateau grows with the dimension (more directions to converge): a real effect
    s_min = [o["fit"]["s_min"] if o["fit"] else None for o in objs]
    best = [min(p["best_steps"] for p in o["points"] if p["best_steps"]) for o in objs]
    assert best[0] < best[1] < best[2], (best, s_min)
    # a series re-run adds nothing
    import sqlite3

    def n_trials() -> int:
        with sqlite3.connect(db) as c:
            return c.execute("select count(*) from trials").fetchone()[0]

    n = n_trials()
    assert n == 3 * 4 * 12
    code, out, err = run_cli(["run", str(path), "--storage", url, "-q"], capsys)
    assert code == 0 and n_trials() == n
    code, _, err = run_cli(["report", str(path), "--storage", url, "--out",
                            str(tmp_path / "rep"), "--n-boot", "20", "--no-dashboard"], capsys)
    assert code == 0, err
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Series: the critical batch size against the series value" in page


def test_series_plot_without_a_series_is_refused(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, SMALL_NQM, "one.toml")
    url = f"sqlite:///{tmp_path / 'o.db'}"
    assert run_cli(["run", str(path), "--storage", url, "-q"], capsys)[0] == 0
    code, _, err = run_cli(["curve", str(path), "--storage", url, "--series-plot",
                            str(tmp_path / "x.png")], capsys)
    assert code == 2 and "--series-plot" in err and not (tmp_path / "x.png").exists()
