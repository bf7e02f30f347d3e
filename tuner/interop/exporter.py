"""``tuner export batch-science``: a spec's stored studies written in batch_science's layout
(:mod:`tuner.interop.batch_science`), so their tools (``data_loader.load_workload``,
``measurement_utils``) read our studies.

Studies imported from batch_science are written back as they were read: their ``study.json``,
each trial's ``metadata.json`` and every measurement (numbers as the shortest text that reads
back as the same float), under their original path. A round trip keeps everything the layout
holds; an empty cell and NaN both read back as empty.

Our own studies go to ``OUT/WORKLOAD/SPEC/OPTIMIZER/B/``: ``study.json`` from the study attrs
(the search space as ``parameter_configs``, ``one_minus_NAME`` as ``NAME`` in
``REVERSE_LOG_SCALE``; ``train_steps`` the budget; ``early_stopping`` whether a pruner ran;
our target and attrs under ``tuner``), each trial's directory named by its trial number with
status ``COMPLETE`` (reached or missed), ``INFEASIBLE`` (diverged) or ``INCOMPLETE`` (pruned,
or failed and re-queued), and its ``curve`` as ``measurements.csv``. Running trials are left
out. Our metric names are kept (``error``, ``loss``, ...): batch_science's are ``val/...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.analysis.records import SpecStudies
from tuner.core.errors import UsageError
from tuner.interop import batch_science as bs
from tuner.interop.importer import WORKLOAD
from tuner.store.source import outcome_of

STATUS_OF = {"reached": "COMPLETE", "missed": "COMPLETE", "diverged": "INFEASIBLE",
             "pruned": "INCOMPLETE", "failed": "INCOMPLETE"}


def _trial(t: FrozenTrial, space: dict[str, Any]) -> bs.Trial | None:
    """One stored trial as a batch_science trial (None: running, not exported)."""
    a = t.user_attrs
    curve = a.get("measurements") or a.get("curve") or {
        "steps": sorted(t.intermediate_values), "metrics": {}}
    columns = list(curve["metrics"])
    rows = [[curve["metrics"][c][i] for c in columns] for i in range(len(curve["steps"]))]
    if "metadata" in a and a.get("status") in bs.STATUSES:  # imported: as it was read
        return bs.Trial(a["metadata"], columns, list(curve["steps"]), rows)
    outcome = outcome_of(t)
    if outcome == "running":
        return None
    md = {"parameters": bs.their_params(space, t.params), "status": STATUS_OF[outcome],
          "steps": a.get("stopped_at_step") or max(curve["steps"], default=0),
          "trial_id": t.number,
          "tuner": {"outcome": outcome, "slot": a.get("slot"), "seed": a.get("seed"),
                    "steps_to_target": a.get("steps_to_target")}}
    return bs.Trial(md, columns, list(curve["steps"]), rows)


def study_json(attrs: dict[str, Any], n_pruned: int) -> dict[str, Any]:
    """``study.json`` of one of our batch-size studies."""
    if WORKLOAD == attrs.get("workload") and "study_json" in attrs:
        return attrs["study_json"]
    return {"batch_size": attrs["batch_size"], "dataset": attrs.get("workload"),
            "model": attrs.get("spec_name"), "optimizer": attrs.get("optimizer"),
            "early_stopping": bool(n_pruned) or attrs.get("pruner", {}).get("name") != "none",
            "parameter_configs": bs.parameter_configs(attrs.get("search_space", {})),
            "train_steps": attrs.get("budget", {}).get("max_steps"),
            "tuner": {"spec_name": attrs.get("spec_name"), "seed": attrs.get("seed"),
                      "target": attrs.get("target"), "schedule": attrs.get("schedule"),
                      "fixed_params": attrs.get("fixed_params"),
                      "workload_options": attrs.get("workload_options")}}


def workload_dir(out: Path, attrs: dict[str, Any]) -> Path:
    """Where a spec's studies go under ``out``."""
    if attrs.get("workload") == WORKLOAD:
        source = attrs.get("workload_options", {}).get("source", ".")
        if source != ".":
            return out / source
        meta = attrs.get("study_json", {})
        return out / str(meta.get("dataset")) / str(meta.get("model")) / str(
            meta.get("optimizer"))
    return out / str(attrs.get("workload")).replace(":", "_").replace("/", "_") / \
        attrs["spec_name"] / str(attrs.get("optimizer"))


def export_batch_science(storage: BaseStorage, s: SpecStudies, out: Path) -> tuple[Path, int]:
    """Write the studies of ``s`` (loaded from ``storage``) under ``out``. Returns the
    workload directory and the number of trials written.

    Raises:
        UsageError: the workload's directory exists already (nothing is written then).
    """
    where = workload_dir(out, s.attrs)
    if where.exists():
        raise UsageError(f"{where}: exists already; allowed: an output folder without this "
                         "workload (export writes nothing over existing files)")
    n = 0
    for st in s.studies:
        sid = storage.get_study_id_from_name(st.study_name)
        stored = storage.get_all_trials(sid, deepcopy=False)
        trials = [x for x in (_trial(t, st.attrs.get("search_space", {})) for t in stored)
                  if x is not None]
        n_pruned = sum(t.state == TrialState.PRUNED for t in stored)
        bs.write_study(where / str(st.batch_size), study_json(st.attrs, n_pruned), trials)
        n += len(trials)
    return where, n
