"""Workloads: the one question every workload answers, the trained base class, the registry.

``from tuner.workload import TrainedWorkload, Data`` is what a plug-in writes (workloads/README.md).
"""

from tuner.core.trial import Reporter, Target, TrialRequest, TrialResult
from tuner.workload.base import NoOptions, Workload
from tuner.workload.registry import get, names, register
from tuner.workload.trained import Data, TrainedWorkload

__all__ = ["Data", "NoOptions", "Reporter", "Target", "TrainedWorkload", "TrialRequest",
           "TrialResult", "Workload", "get", "names", "register"]
