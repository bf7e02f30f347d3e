"""Small batch_science directories, written as the published archive writes them
(google-research's batch_science/README.md): ``study.json`` per study, ``metadata.json`` and
``measurements.csv`` per trial, in ``dataset/model/optimizer/batch_size/trial_id/``."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

COLUMNS = ("train/cross_entropy_error", "train/classification_error", "val/cross_entropy_error",
           "val/classification_error", "test/cross_entropy_error", "test/classification_error")

CONFIGS = {
    "learning_rate": {"max_value": 10.0, "min_value": 0.0001, "scale": "LOG_SCALE",
                      "type": "DOUBLE"},
    "momentum": {"max_value": 0.9999, "min_value": 0.9, "scale": "REVERSE_LOG_SCALE",
                 "type": "DOUBLE"},
    "learning_rate_decay_steps": {"max_value": 6000, "min_value": 3000, "scale": "",
                                  "type": "INTEGER"},
    "label_smoothing": {"feasible_points": [0.0, 0.01, 0.1], "type": "DISCRETE"},
}


def error_at(step: int, rate: float, floor: float) -> float:
    """A learning curve: error decays from 0.9 to ``floor`` at ``rate`` per step."""
    return floor + (0.9 - floor) * math.exp(-rate * step)


def write_workload(root: Path, dataset: str = "fashion_mnist", model: str = "simple_cnn",
                   optimizer: str = "nesterov_momentum", batch_sizes=(16, 64, 256, 1024),
                   n_trials: int = 12, seed: int = 0, train_steps: int = 4000) -> Path:
    """A workload directory with one study per batch size: trials with a seeded learning rate
    and momentum, curves that reach lower error sooner at larger batch sizes (with
    diminishing returns), a few INFEASIBLE (NaN from where they diverged) and INCOMPLETE
    (stopped early) trials, uneven evaluation steps, and some trials run past train_steps."""
    rng = random.Random(seed)
    wdir = root / dataset / model / optimizer
    for b in batch_sizes:
        sdir = wdir / str(b)
        sdir.mkdir(parents=True)
        (sdir / "study.json").write_text(json.dumps({
            "batch_size": b, "dataset": dataset, "early_stopping": False, "model": model,
            "optimizer": optimizer, "parameter_configs": CONFIGS, "train_steps": train_steps},
            indent=2, sort_keys=True))
        for tid in range(1, n_trials + 1):
            lr = 10 ** rng.uniform(-4, 1)
            mom = 1 - 10 ** rng.uniform(-4, -1)
            params = {"learning_rate": lr, "momentum": mom,
                      "learning_rate_decay_steps": rng.randint(3000, 6000),
                      "label_smoothing": rng.choice([0.0, 0.01, 0.1])}
            eff = lr / (1 - mom)
            quality = math.exp(-abs(math.log10(eff) - 1.5))  # best near lr/(1-m) = 30
            rate = 1e-3 * quality * b / (b + 128) * 8
            floor = 0.05 + 0.2 * (1 - quality)
            status = "COMPLETE"
            u = rng.random()
            if u < 0.15:
                status = "INFEASIBLE"
            elif u < 0.25:
                status = "INCOMPLETE"
            last = train_steps + (500 if rng.random() < 0.3 else 0)
            if status == "INCOMPLETE":
                last = rng.choice([500, 1000, 1500])
            steps, s = [0], 0
            while s < last:
                s = min(last, s + rng.choice([100, 150, 250]))
                steps.append(s)
            diverge_at = rng.choice(steps[2:]) if status == "INFEASIBLE" else None
            lines = ["step," + ",".join(COLUMNS)]
            for st in steps:
                if diverge_at is not None and st >= diverge_at:
                    row = ["nan"] * len(COLUMNS)
                else:
                    e = error_at(st, rate, floor) + rng.gauss(0, 0.005)
                    row = [repr(2.3 * e), repr(e * 0.95), repr(2.3 * e + 0.01), repr(e),
                           repr(2.3 * e + 0.02), repr(e + 0.003)]
                lines.append(f"{st}," + ",".join(row))
            tdir = sdir / str(tid)
            tdir.mkdir()
            (tdir / "metadata.json").write_text(json.dumps({
                "_internal_study_name": f"{model}-bs{b}", "_internal_trial_id": tid + 100,
                "parameters": params, "status": status, "steps": steps[-1], "trial_id": tid},
                indent=2, sort_keys=True))
            (tdir / "measurements.csv").write_text("\n".join(lines) + "\n")
    return wdir


def their_steps_to_result(wdir: Path, column: str, threshold: float,
                          maximize: bool = False) -> dict[int, tuple[int, int] | None]:
    """An independent re-implementation of batch_science's ``compute_steps_to_result`` over
    ``load_workload``'s default (COMPLETE trials only): per batch size, the (step, trial_id) of
    the first measurement, ordered by step then trial id, strictly better than ``threshold``;
    None when none is."""
    out: dict[int, tuple[int, int] | None] = {}
    for sdir in sorted(p for p in wdir.iterdir() if p.is_dir()):
        b = json.loads((sdir / "study.json").read_text())["batch_size"]
        rows = []
        for tdir in (p for p in sdir.iterdir() if p.is_dir()):
            md = json.loads((tdir / "metadata.json").read_text())
            if md["status"] != "COMPLETE":
                continue
            text = (tdir / "measurements.csv").read_text().splitlines()
            header = text[0].split(",")
            col = header.index(column)
            for line in text[1:]:
                cells = line.split(",")
                v = float(cells[col]) if cells[col] else math.nan
                if (v > threshold) if maximize else (v < threshold):
                    rows.append((int(cells[0]), md["trial_id"]))
        out[b] = min(rows) if rows else None
    return out
