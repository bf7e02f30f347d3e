"""The built-in workloads (digits, Fashion-MNIST, the noisy quadratic model).

The registry lives in :mod:`tuner.workload.registry`; ``workloads.register`` / ``workloads.get``
stay here for plug-ins written against earlier versions.
"""

from tuner.workload.registry import get, names, register

__all__ = ["get", "names", "register"]
