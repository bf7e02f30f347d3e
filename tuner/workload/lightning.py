"""A user's LightningModule (and LightningDataModule), unchanged, as a workload.

A spec names them instead of a workload::

    [workload]
    module = "mylab.models:LitClassifier"
    datamodule = "mylab.data:FashionMNISTDataModule"   # optional: else the module's dataloaders
    module_args = { hidden = 64 }
    datamodule_args = { augment = true }
    batch_size_arg = "batch_size"                       # the argument that receives B

and may search constructor arguments as ``"module.NAME"`` / ``"datamodule.NAME"``. Each trial
seeds every RNG with the trial's seed, constructs both with the fixed and searched arguments, and
runs Lightning's ``Trainer.fit`` (:mod:`tuner.train.fit`). The metrics are what the module logs in
validation: :meth:`LightningWorkload.preflight` finds them with one tiny fit before any storage is
touched.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from tuner.core.errors import UsageError, one_line
from tuner.core.branching import LR_RULES, Branch, Checkpoint, LocalCBS
from tuner.core.predict import NoiseScale, estimated
from tuner.core.trial import Reporter, TrialRequest, TrialResult
from tuner.workload.base import Workload
from tuner.workload.registry import import_object

if TYPE_CHECKING:
    from lightning.pytorch import LightningDataModule, LightningModule

#: Search-space prefixes of constructor arguments.
MODULE, DATAMODULE = "module.", "datamodule."


@dataclass
class LightningOptions:
    """``[workload]`` keys of a LightningModule spec."""

    module: str
    datamodule: str = ""
    module_args: dict[str, Any] = field(default_factory=dict)
    datamodule_args: dict[str, Any] = field(default_factory=dict)
    batch_size_arg: str = "batch_size"
    #: ``"package.module:Class"`` of Lightning callbacks, constructed without arguments.
    callbacks: list[str] = field(default_factory=list)
    #: ``Trainer(gradient_clip_val=...)``; 0 = no clipping.
    gradient_clip_val: float = 0.0


class BuildError(Exception):
    """Constructing the module (``key = "module"``) or DataModule failed (the cause chained)."""

    def __init__(self, key: str, what: str) -> None:
        super().__init__(f"constructing {what} failed")
        self.key, self.what = key, what


def _accepts(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes a keyword argument ``name``."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # a signature Python cannot read: let the call decide
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The searched ``module.*`` and ``datamodule.*`` arguments, without their prefixes."""
    mod = {k[len(MODULE):]: v for k, v in params.items() if k.startswith(MODULE)}
    dm = {k[len(DATAMODULE):]: v for k, v in params.items() if k.startswith(DATAMODULE)}
    return mod, dm


class LightningWorkload(Workload):
    """A LightningModule + LightningDataModule named by a spec; trained by ``Trainer.fit``."""

    name: ClassVar[str] = "lightning"
    Options: ClassVar[type] = LightningOptions
    metrics_from_preflight: ClassVar[bool] = True

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._sizes: tuple[int, int] | None = None

    # -- classes and arguments ------------------------------------------------------------------

    def module_class(self) -> type[LightningModule]:
        """The LightningModule class (imported)."""
        return import_object(self.options.module, "module")  # type: ignore[return-value]

    def datamodule_class(self) -> type[LightningDataModule] | None:
        """The LightningDataModule class, or None when the module has its own dataloaders."""
        if not self.options.datamodule:
            return None
        return import_object(self.options.datamodule, "datamodule")  # type: ignore[return-value]

    def check_options(self) -> list[tuple[str, str]]:
        """Import both classes and check the arguments the spec passes them."""
        from lightning.pytorch import (  # heavy: lightning, only for these specs
            LightningDataModule,
            LightningModule,
        )

        o = self.options
        try:
            mod = self.module_class()
        except KeyError as exc:
            return [("module", exc.args[0])]
        if not (isinstance(mod, type) and issubclass(mod, LightningModule)):
            return [("module", f"{o.module!r} is not a LightningModule subclass; allowed: a "
                     "subclass of lightning.pytorch.LightningModule (= L.LightningModule)")]
        try:
            dm = self.datamodule_class()
        except KeyError as exc:
            return [("datamodule", exc.args[0])]
        if dm is not None and not (isinstance(dm, type) and issubclass(dm, LightningDataModule)):
            return [("datamodule", f"{o.datamodule!r} is not a LightningDataModule subclass")]
        if mod.validation_step is LightningModule.validation_step:
            return [("module", f"{o.module!r} defines no validation_step: the target is a "
                     "metric it logs there with self.log")]
        holder = dm or mod
        base = LightningDataModule if dm is not None else LightningModule
        for hook in ("train_dataloader", "val_dataloader"):
            if getattr(holder, hook) is getattr(base, hook):
                key = "datamodule" if dm is not None else "module"
                return [(key, f"{(o.datamodule or o.module)!r} defines no {hook}()"
                         + ("" if dm is not None else "; give [workload] datamodule"))]
        for key, cls, args in (("module_args", mod, o.module_args),
                               ("datamodule_args", dm, o.datamodule_args)):
            if cls is None and args:
                return [(key, "given without [workload] datamodule")]
            for k in args if cls is not None else ():
                if not _accepts(cls, k):
                    return [(key, f"{cls.__name__} takes no argument {k!r}")]
        if not _accepts(holder, o.batch_size_arg):
            return [("batch_size_arg", f"{holder.__name__} takes no argument "
                     f"{o.batch_size_arg!r}, which receives the batch size B; allowed: the "
                     "name of its batch-size argument")]
        for path in o.callbacks:
            try:
                import_object(path, "callback")
            except KeyError as exc:
                return [("callbacks", exc.args[0])]
        if o.gradient_clip_val < 0:
            return [("gradient_clip_val", f"{o.gradient_clip_val}; allowed: >= 0 (0: off)")]
        return []

    def check_metaparameters(self, optimizer: str, schedule: str, fixed: dict[str, Any],
                             searched: set[str]) -> list[tuple[str, str]]:
        """Searched constructor arguments must be arguments of their class."""
        mod, dm = self.module_class(), self.datamodule_class()
        for name in sorted(searched):
            cls = mod if name.startswith(MODULE) else dm if name.startswith(DATAMODULE) else None
            if name.startswith(DATAMODULE) and cls is None:
                return [(f"search_space.{name}", "searches a DataModule argument without "
                         "[workload] datamodule")]
            arg = name.split(".", 1)[1] if cls is not None else ""
            if cls is not None and not _accepts(cls, arg):
                return [(f"search_space.{name}", f"{cls.__name__} takes no argument {arg!r}")]
            if cls is not None and name.startswith(MODULE) and arg in self.options.module_args:
                return [(f"search_space.{name}", "is also in [workload] module_args; searched or "
                         "fixed, not both")]
            if cls is not None and name.startswith(DATAMODULE) and (
                    arg in self.options.datamodule_args):
                return [(f"search_space.{name}", "is also in [workload] datamodule_args")]
        return []

    def build(self, request: TrialRequest) -> tuple[LightningModule, LightningDataModule | None,
                                                    int]:
        """Seed every RNG with the trial's seed, then construct the module and DataModule:
        ``(module, datamodule or None, per-device batch size)``."""
        import lightning.pytorch as pl  # heavy: lightning

        pl.seed_everything(request.seed, workers=True, verbose=False)
        o = self.options
        per_device = request.batch_size // request.devices
        mod_params, dm_params = _split(request.params)
        dm_cls = self.datamodule_class()
        mod_args = {**o.module_args, **mod_params}
        if dm_cls is None:
            mod_args[o.batch_size_arg] = per_device
        mod_cls = self.module_class()
        try:
            module = mod_cls(**mod_args)
        except Exception as exc:  # noqa: BLE001 - the user's constructor
            raise BuildError("module", mod_cls.__name__) from exc
        dm = None
        if dm_cls is not None:
            try:
                dm = dm_cls(**o.datamodule_args, **dm_params, **{o.batch_size_arg: per_device})
            except Exception as exc:  # noqa: BLE001 - the user's constructor
                raise BuildError("datamodule", dm_cls.__name__) from exc
        return module, dm, per_device

    def callbacks(self) -> tuple[Any, ...]:
        """The spec's Lightning callbacks, freshly constructed."""
        return tuple(import_object(p, "callback")() for p in self.options.callbacks)

    # -- data sizes ----------------------------------------------------------------------------

    def _data_sizes(self) -> tuple[int, int]:
        """(training, validation) examples, from the DataModule's datasets after ``setup``."""
        if self._sizes is None:
            import lightning.pytorch as pl  # heavy: lightning

            pl.seed_everything(0, verbose=False)
            o = self.options
            dm_cls = self.datamodule_class()
            holder: Any
            if dm_cls is None:
                holder = self.module_class()(**o.module_args, **{o.batch_size_arg: 1})
            else:
                holder = dm_cls(**o.datamodule_args, **{o.batch_size_arg: 1})
            holder.prepare_data()  # the hooks Lightning calls before the dataloaders
            holder.setup("fit")
            sizes = []
            for hook in ("train_dataloader", "val_dataloader"):
                loader = getattr(holder, hook)()
                try:
                    sizes.append(len(loader.dataset))
                except TypeError:  # an IterableDataset without __len__
                    sizes.append(0)
            self._sizes = (sizes[0], sizes[1])
        return self._sizes

    def num_train_examples(self) -> int:
        """Training examples (0 for a stream without a length)."""
        return self._data_sizes()[0]

    def num_val_examples(self) -> int:
        """Validation examples; an unsized validation stream counts as 1 (it exists)."""
        return self._data_sizes()[1] or 1

    # -- trials ---------------------------------------------------------------------------------

    def preflight(self, request: TrialRequest) -> tuple[list[tuple[str, str]], set[str]]:
        """Construct both, run one training step and one validation pass over two batches, and
        name what fails (a spec key and the exception's last line)."""
        from tuner.train import fit  # heavy: torch and lightning

        o = self.options
        try:
            module, dm, per_device = self.build(request)
        except BuildError as exc:
            return [(f"workload.{exc.key}", f"{exc.what}(...) failed: "
                     f"{one_line(exc.__cause__ or exc)}")], set()
        if request.schedule != "constant" and not module.automatic_optimization:
            return [("optimizer.schedule", f"{request.schedule!r} with a module that uses "
                     "manual optimization (it steps its own schedulers); allowed: constant, "
                     "or [optimizer] name = 'module'")], set()
        phase = fit.Phase()
        try:
            result = self._fit(module, dm, per_device, request, lambda s, m: False,
                               limit_val_batches=2, phase=phase)
        except fit.BadBatch as exc:
            holder = o.datamodule or o.module
            return [("workload.batch_size_arg", f"{exc} at {o.batch_size_arg}={per_device}: "
                     f"does {holder} pass {o.batch_size_arg!r} to its DataLoader?")], set()
        except fit.MissingMetric as exc:
            return [("target.metric", f"{request.target.metric!r} is not logged in "
                     f"validation_step; logged: {', '.join(exc.logged) or 'nothing'}")], set()
        except Exception as exc:  # noqa: BLE001 - the user's code
            key = ("workload.datamodule" if phase.name == "setup" and o.datamodule
                   else "workload.module")
            where = {"setup": "setting up the data", "training_step": "the training step",
                     "validation_step": "validation"}[phase.name]
            return [(key, f"{where} failed: {one_line(exc)}")], set()
        logged = set(result.curve[0][1]) if result.curve else set()
        for g in request.also:
            if g.metric not in logged:
                return [("target.also", f"{g}: {g.metric!r} is not logged in validation_step; "
                         f"logged: {', '.join(sorted(logged))}")], logged
        return [], logged

    def run(self, request: TrialRequest, report: Reporter) -> TrialResult:
        """One trial under ``Trainer.fit``; with ``devices > 1``, DDP in that many rank
        processes (:mod:`tuner.train.fit_ddp`)."""
        if request.devices > 1:
            from tuner.train.fit_ddp import fit_ddp  # heavy: torch and lightning

            return fit_ddp(self, request, report)
        return self.run_here(request, report)

    def noise_scale(self, request: TrialRequest, at: Sequence[int], micro_batches: int,
                    ema: float) -> NoiseScale:
        """The two-batch estimator along one ``Trainer.fit`` of the module at fixed
        metaparameters: :class:`tuner.train.noise.NoiseProbe` measures before each step in
        ``at``; the fit itself is the module's own (one validation pass, at its end).

        Raises:
            UsageError: DDP (``devices`` > 1) or manual optimization, which this probe does
                not measure.
        """
        from tuner.train.noise import NoiseProbe  # heavy: torch and lightning

        if request.devices > 1:
            raise UsageError("trainer.devices: the noise scale is measured on one device; "
                             "allowed: 1")
        module, dm, per_device = self.build(request)
        _automatic(module, "the noise-scale probe")
        probe = NoiseProbe(at, micro_batches, per_device)
        r = self._fit(module, dm, per_device, request, lambda step, metrics: False,
                      probes=(probe,))
        return estimated(request.batch_size, micro_batches, probe.points, ema,
                         r.stopped_at_step, r.stopped_at_step if r.diverged else None)

    def branch(self, request: TrialRequest, at: Sequence[int], factors: Sequence[int],
               lr_rule: str, horizon: int) -> LocalCBS:
        """Merrill et al.'s branches with ``Trainer.fit`` (:mod:`tuner.train.branching`): one
        fit of the reference, validated at the checkpoints and ``horizon`` steps after each,
        its state kept at each checkpoint; one fit per branch, built at k B0 and started from
        that state.

        One device, the spec's schedule constant (:func:`tuner.run.branching.measure` refuses
        the rest).

        Raises:
            UsageError: manual optimization, a scheduler from the module's
                ``configure_optimizers``, or no validation loss to compare.
        """
        import dataclasses

        from tuner.train.branching import (  # heavy: lightning
            LIGHTNING_LOSSES, Restore, Snapshot, branch_seed, compared_metric)

        points = sorted(set(at))
        ends = {s + horizon: s for s in points}
        evals = sorted({s for s in points if s > 0} | set(ends))
        seen: dict[int, dict[str, float]] = {}
        ref = dataclasses.replace(request, max_steps=evals[-1], eval_steps=tuple(evals),
                                  train_to_budget=True)
        module, dm, per_device = self.build(ref)
        _automatic(module, "branching")
        snap = Snapshot(points)
        self._fit(module, dm, per_device, ref, _recorder(seen), probes=(snap,))
        if not seen:
            raise UsageError(f"the reference run at B = {request.batch_size} diverged before "
                             "its first validation")
        metric = compared_metric(request, list(next(iter(seen.values()))), LIGHTNING_LOSSES)
        out = []
        for i, s in enumerate(points):
            if s not in snap.kept or s + horizon not in seen:
                break  # the reference diverged before this checkpoint or its comparison
            branches = []
            for k in factors:
                r = LR_RULES[lr_rule](k)
                req_k = dataclasses.replace(
                    request, batch_size=k * request.batch_size, max_steps=horizon // k,
                    eval_steps=(horizon // k,), seed=branch_seed(request.seed, i, k),
                    train_to_budget=True)
                got: dict[int, dict[str, float]] = {}
                mod_k, dm_k, per_k = self.build(req_k)
                res = self._fit(mod_k, dm_k, per_k, req_k, _recorder(got),
                                probes=(Restore(snap.kept[s], r),))
                v = got.get(horizon // k, {}).get(metric)
                branches.append(Branch(k, k * request.batch_size, snap.learning_rate(s) * r,
                                       horizon // k,
                                       v if v is not None and not res.diverged else None))
            out.append(Checkpoint(s, s * request.batch_size, seen.get(s, {}).get(metric),
                                  seen[s + horizon][metric], branches))
        return LocalCBS(request.batch_size, lr_rule, 0.0, horizon,
                        f"trained (Trainer.fit of the LightningModule): one reference run and "
                        f"its branches, compared on the validation {metric} (one seed each: "
                        f"the comparison carries the runs' noise)", out)

    def run_here(self, request: TrialRequest, report: Reporter | None) -> TrialResult:
        """The trial (or, under DDP, this rank's part of it) in this process; ``report`` is
        None on the ranks that do not report (all but rank 0)."""
        if report is None:
            def report(step: int, metrics: dict[str, float]) -> bool:
                raise AssertionError("only rank 0 reports")

        module, dm, per_device = self.build(request)
        return self._fit(module, dm, per_device, request, report)

    def _fit(self, module: LightningModule, dm: LightningDataModule | None, per_device: int,
             request: TrialRequest, report: Reporter, probes: tuple[Any, ...] = (),
             **kw: Any) -> TrialResult:
        """:func:`tuner.train.fit.fit_trial` with this spec's callbacks (then ``probes``:
        callbacks of ours), clipping and optimizer choice (``kw``: the pre-flight's limits)."""
        from tuner.train.fit import fit_trial  # heavy: torch and lightning

        return fit_trial(module, dm, request, report, per_device_batch=per_device,
                         callbacks=(*self.callbacks(), *probes),
                         gradient_clip_val=self.options.gradient_clip_val or None,
                         module_optimizers=request.optimizer == "module", **kw)


def _automatic(module: LightningModule, what: str) -> None:
    """Refuse a module that uses manual optimization, which ``what`` does not follow.

    Raises:
        UsageError: it does.
    """
    if not module.automatic_optimization:
        raise UsageError(f"workload.module: {type(module).__name__} uses manual optimization; "
                         f"{what} needs automatic optimization")


def _recorder(into: dict[int, dict[str, float]]) -> Reporter:
    """A reporter that keeps every evaluation's metrics in ``into`` and never prunes."""
    def report(step: int, metrics: dict[str, float]) -> bool:
        into[step] = metrics
        return False

    return report
