"""The interface every model family implements, and the registry that names them.

A family is one small class: configured by a pydantic parameter model, fitted on an array
(`fit` returns self, fitted state ends in an underscore), sampled with the numpy Generator it is
given, and scored on held-out real data. Library quirks (a sampler that ignores a passed generator,
a tuple where an array is expected) are absorbed inside the family, never by its callers.
"""

from __future__ import annotations

import importlib
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import (
    EntryPoint,
    PackageNotFoundError,
    entry_points,
    packages_distributions,
)
from importlib.metadata import version as distribution_version
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict

from collapselab.data import RealData

if TYPE_CHECKING:
    from collapselab.onset import Threshold
    from collapselab.theory import ClosedForm

#: Which values of a metric are further from collapse: lower, higher, nearer `reference`, or
#: neither (a descriptive quantity such as a training set's size).
Better = Literal["lower", "higher", "reference", "neither"]

#: Domains: at least 0, and a share.
NON_NEGATIVE: tuple[float | None, float | None] = (0.0, None)
SHARE: tuple[float | None, float | None] = (0.0, 1.0)


@dataclass(frozen=True)
class MetricInfo:
    """What a metric means and how the report shows it; each family declares its own metrics'
    (`ModelFamily.metrics_info`), so the same name may carry a family's own unit."""

    title: str
    #: The y-axis label (the quantity and its unit).
    axis_label: str
    #: The unit alone ("nats per point", "share", "" for a pure ratio).
    unit: str
    #: One sentence on what the metric measures; the figure's caption starts with it.
    meaning: str
    better: Better
    #: `auto-log`: log scale when every drawn mean is positive and they span more than two decades.
    y_scale: Literal["linear", "log", "auto-log"] = "linear"
    #: A value drawn as a dotted reference line (the value that means "no collapse").
    reference: float | None = None
    #: (lower, upper) bounds of the values the metric can take; None = unbounded on that side.
    #: Figures clip confidence bands to it, so a band never promises a value the metric cannot have.
    domain: tuple[float | None, float | None] = (None, None)


#: Metrics every generation records whatever the family (chain._generation_metrics).
GENERIC_METRICS: dict[str, MetricInfo] = {
    "real_fraction": MetricInfo(
        "Real share of the training set",
        "real fraction",
        "share",
        "Share of the training set that is real data",
        better="neither",
        domain=SHARE,
    ),
    "train_size": MetricInfo(
        "Training-set size",
        "points",
        "points",
        "Training-set size (points)",
        better="neither",
        domain=NON_NEGATIVE,
    ),
}


@dataclass(frozen=True)
class ExamplesInfo:
    """How the report draws a family's examples (the kept samples of `ModelFamily.examples`)."""

    kind: Literal["image", "density", "ranks", "text", "curve", "shares"]
    #: image: the pixel values drawn white and black (values outside are clipped).
    pixel_range: tuple[float, float] = (0.0, 1.0)
    #: image: side of the square mosaic of examples per (strategy, generation).
    mosaic_side: int = 4
    #: curve: the axes' labels; shares: y_label names what the shares are of.
    x_label: str = ""
    y_label: str = ""
    #: What a reader should look for, under the figure (the report has a default per kind).
    caption: str = ""


@dataclass(frozen=True)
class CalibrationCells:
    """A family's control and surely-collapsing cells (strategy labels) of
    studies/calibration.yaml, on which its default collapse indicators were calibrated."""

    controls: tuple[str, ...]
    collapsing: tuple[str, ...]
    why: str
    #: Replicates per cell in the CI-sized calibration test (slow families get fewer).
    ci_replicates: int


class Degenerate(Exception):
    """A fit that degenerated (zero variance, singular covariance, ...): it ends the run with
    status `degenerate`, a result, not an error."""


@dataclass(frozen=True)
class RunContext:
    """What a run's models may know beyond their training set: R0 (a regression relabels its
    fixed design, an n-gram scores its samples under a model of it). The held-out test set is
    not in it: it reaches only `metrics`, so no fit can see it.

    `memo` keeps what a family derives once a run (a summary of the test set `metrics` gets
    every generation), since the chain builds a new model every generation; keys are prefixed
    with the family's name."""

    r0: np.ndarray
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class FamilyParams(BaseModel):
    """Parameters of a family; each family subclasses this with a `family` literal tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str

    def label(self) -> str:
        """A short human label: the family and the parameters that differ from the defaults."""
        changed = {
            name: value
            for name, value in self.model_dump(exclude={"family"}).items()
            if value != type(self).model_fields[name].default
        }
        inner = ", ".join(f"{k}={v}" for k, v in changed.items())
        return f"{self.family}({inner})" if inner else self.family


class ModelFamily(ABC):
    """A generative model family: its truth, and fit / sample / score / metrics."""

    name: ClassVar[str]
    Params: ClassVar[type[FamilyParams]]
    metric_names: ClassVar[tuple[str, ...]]
    #: What `temperature` means for this family's sampler (README and report quote it).
    temperature_meaning: ClassVar[str]
    #: Whether two real points are never equal (continuous data, a de-duplicated data set), so a
    #: held-out point can be recognised by value. False for tokens drawn from a vocabulary.
    distinct_points: ClassVar[bool] = True
    #: Every metric `metrics` returns, in the report's order (most telling first), with its
    #: meaning and presentation. `metric_names` is its keys.
    metrics_info: ClassVar[Mapping[str, MetricInfo]]
    #: The default collapse indicators (collapselab.onset), calibrated on `calibration`'s cells.
    collapse_indicators: ClassVar[tuple[Threshold, ...]] = ()
    #: The cells its indicators were calibrated on, or None (then it has no calibration rows).
    calibration: ClassVar[CalibrationCells | None] = None
    #: How the report draws `examples`, or None when the family keeps none.
    examples_info: ClassVar[ExamplesInfo | None] = None
    #: Bumped whenever the family's numbers change for the same parameters and seeds (a metric
    #: added, renamed or computed differently): part of a run's identity (config.RunSpec.run_id),
    #: so stored runs of the old numbers are re-run while other families' runs stay stored.
    results_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        info = cls.__dict__.get("metrics_info")
        if info is not None and "metric_names" not in cls.__dict__:
            cls.metric_names = tuple(info)

    def __init__(self, params: FamilyParams, *, context: RunContext | None = None) -> None:
        self.params = params
        self.context = context

    # --- budgets: estimated from the parameters alone, before any data is built -------------

    @classmethod
    def point_bytes(cls, params: FamilyParams) -> int:
        """Bytes one point takes in memory: training sets, samples and history hold points, so
        a study's memory grows with this times the points a strategy keeps (config.Budget)."""
        return 8

    @classmethod
    def working_bytes(
        cls, params: FamilyParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """Peak bytes of one generation's fit, sample and metrics on `train_points` training
        points (n samples drawn, `test_size` held out), plus the real data set the family loads:
        what a worker holds beyond the strategy's history. An estimate, safe on the high side."""
        point = cls.point_bytes(params)
        return 4 * (train_points + n + test_size) * point

    @abstractmethod
    def real_data(self) -> RealData:
        """The real data this configuration is trained on at generation 0 and tested against."""

    @abstractmethod
    def fit(self, X: np.ndarray) -> Self:
        """Fit on `X`; raise `Degenerate` when the fit cannot define a usable model."""

    @abstractmethod
    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        """Draw `n` points from the fitted model with `rng`; temperature T samples density^(1/T)."""

    @abstractmethod
    def score(self, X: np.ndarray) -> float:
        """Mean negative log-likelihood of `X` under the fitted model, in nats per point of `X`
        (what a point is, and so the unit, is the family's: `metrics_info["test_nll"].unit`
        says it where the family reports the score)."""

    @abstractmethod
    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        """The family's metrics of the fitted model, against its truth and the held-out `test`.

        `rng` is a stream of its own for Monte Carlo metrics: using it never changes the chain."""

    # --- what the family knows about itself: the report, onset and validate read these --------

    @classmethod
    def references(
        cls, params: FamilyParams, *, strategy: Mapping[str, Any], n: int
    ) -> list[ClosedForm]:
        """The closed forms (collapselab.theory) that hold exactly for these parameters under
        `strategy` (a run's stored JSON dict; temperature 1 and n >= 2 are checked by the caller)
        with n points a generation; [] when the literature has none."""
        return []

    @classmethod
    def value_after_degenerate(cls, metric: str) -> float | None:
        """The value `metric` keeps for ever once a chain degenerated, when its closed form
        averages over such chains too (None: degenerate chains are outside the law)."""
        return None

    @classmethod
    def examples_truth(cls, params: FamilyParams) -> list[float] | dict[str, list[float]] | None:
        """The truth the examples are drawn against, as a dashed line, or None: ranks, the true
        probabilities in rank order; curve, {"x": [...], "y": [...]}."""
        return None

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[Any]] | None:
        """The examples the report shows of this model, as (kind, items): ("text", [sentence,
        ...]), ("image", [2-D list of pixel values, ...]), ("density", [{"mean": [...], "cov":
        [[...]]}]), ("ranks", [[probabilities in true rank order]]), ("curve", [{"x": [...],
        "y": [...]}]: one curve of this model, say its Lorenz curve or its density on a grid) or
        ("shares", [{"labels": [...], "shares": [...]}]: parts of a whole, summing to 1, drawn
        as one stacked bar per kept generation); None for nothing."""
        return None

    #: The family's batched path (collapselab.engine), or None: its runs take the per-run path.
    Batched: ClassVar[type[BatchedModel] | None] = None


class BatchedModel(ABC):
    """R models of one family and one configuration, fitted, sampled and scored together as array
    computations over a leading replicate axis (row r of every array is replicate r).

    Each replicate draws from its own Generators, in the order and sizes its `ModelFamily` would
    alone, so every number of replicate r equals its run through the per-run path
    (tests/test_engine.py checks it to a relative 1e-9). A replicate whose fit degenerates is
    reported by `fit`, then dropped by `keep`; the others go on. Anything a method raises sends
    the whole cell back to the per-run path (collapselab.engine), so raise rather than guess.

    A generation, as the engine drives it: `fit` (or, for an incremental family under an
    incremental strategy, `pool_start(R0)` at generation 0 and `pool_add(S_{t-1})` later, each
    followed by `fit_pool`), `keep` if some replicate degenerated, `metrics`, `examples` for the
    replicates whose examples are kept, then `sample`.
    """

    #: True when the family can keep a running summary of an accumulated pool (sums, counts,
    #: cross-products) and fit on it: an accumulating strategy then costs O(n) a generation.
    incremental: ClassVar[bool] = False

    def __init__(
        self, params: FamilyParams, *, contexts: list[RunContext], tests: list[np.ndarray]
    ) -> None:
        """`tests[r]` is replicate r's held-out test set, for `metrics` only: a family
        summarises it here once (its fits never see it) and keeps the summary in step with
        `keep`."""
        if len(tests) != len(contexts):
            raise ValueError(f"{len(tests)} test sets for {len(contexts)} replicates")
        self.params = params
        self.contexts = contexts

    @property
    def replicates(self) -> int:
        return len(self.contexts)

    @abstractmethod
    def fit(self, X: np.ndarray) -> dict[int, str]:
        """Fit replicate r on X[r] (shape (R, m, *point_shape)). Returns {r: reason} for the
        replicates whose fit degenerated (their fitted state is then meaningless), reason being
        the message `ModelFamily.fit`'s `Degenerate` carries (the run's error quotes it)."""

    @abstractmethod
    def sample(
        self, n: int, *, rngs: Sequence[np.random.Generator], temperature: float = 1.0
    ) -> np.ndarray:
        """(R, n, *point_shape): replicate r's n points, drawn with rngs[r] exactly as
        `ModelFamily.sample` draws them."""

    @abstractmethod
    def metrics(self, *, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        """Every metric of `ModelFamily.metrics`, each an (R,) array, against each replicate's
        truth and held-out test set (the constructor's `tests`); rngs[r] is replicate r's metric
        stream."""

    @abstractmethod
    def keep(self, mask: np.ndarray) -> None:
        """Keep only the replicates where `mask` (R,) is True, in order (contexts included)."""

    def examples(self, r: int, *, rng: np.random.Generator) -> tuple[str, list[Any]] | None:
        """`ModelFamily.examples` of replicate r."""
        return None

    # --- incremental pools (only when `incremental`) ---------------------------------------

    def pool_start(self, X: np.ndarray) -> None:
        """The pool is X (R, m, *point_shape): R0 of every replicate."""
        raise NotImplementedError(f"{type(self).__name__} keeps no running pool summary")

    def pool_add(self, X: np.ndarray) -> None:
        """Add X (R, m, *point_shape), the latest samples, to the pool's summary."""
        raise NotImplementedError(f"{type(self).__name__} keeps no running pool summary")

    def fit_pool(self) -> dict[int, str]:
        """Fit every replicate on its whole pool so far; the same numbers as `fit` on the
        stacked pool within float tolerance. Returns degenerate replicates as `fit` does."""
        raise NotImplementedError(f"{type(self).__name__} keeps no running pool summary")


# --- the registry: built-in families, installed plug-ins and classes named by import path -----

#: The entry-point group an installed package declares its families in:
#: `[project.entry-points."collapselab.families"] poisson = "collapselab_poisson:PoissonFamily"`.
ENTRY_POINT_GROUP = "collapselab.families"

FAMILIES: dict[str, type[ModelFamily]] = {}

#: `package.module:ClassName`: only dotted identifiers, so a study names code, never carries it.
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class PluginOrigin:
    """Where a family from outside collapselab came from: provenance records `distribution`
    with the code version, and a later process finds the class again by `import_path`."""

    import_path: str
    #: "collapselab-poisson 0.1.0": the installed distribution that ships the module, or None
    #: for a module importable from a path that belongs to no distribution.
    distribution: str | None


#: Every family registered from outside collapselab, by name.
PLUGINS: dict[str, PluginOrigin] = {}


def register(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: make a family available to study files under `cls.name`."""
    if cls.name in FAMILIES:
        raise ValueError(f"model family {cls.name!r} registered twice")
    FAMILIES[cls.name] = cls
    return cls


@cache
def _entry_points() -> dict[str, EntryPoint]:
    """The installed plug-ins by entry-point name, read once a process (and only when a study
    names a family that is not built in: reading them costs a scan of every installed package)."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    return found


def _distribution_of(module: str) -> str | None:
    """'name version' of the installed distribution whose files provide top-level `module`."""
    top = module.partition(".")[0]
    for name in packages_distributions().get(top, []):
        try:
            return f"{name} {distribution_version(name)}"
        except PackageNotFoundError:
            continue
    return None


def _entry_point_distribution(entry: EntryPoint) -> str | None:
    dist = entry.dist
    if dist is None:
        return _distribution_of(entry.module)
    return f"{dist.metadata['Name'] or dist.name} {dist.version}"


def _check_family(cls: object, *, what: str, fix: str) -> type[ModelFamily]:
    """`cls` if it is a usable family class, else ValueError naming `what` and `fix`."""
    if not (isinstance(cls, type) and issubclass(cls, ModelFamily)):
        kind = f"class {cls.__name__}" if isinstance(cls, type) else type(cls).__name__
        raise ValueError(f"{what} is a {kind}, not a collapselab ModelFamily subclass; {fix}")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ValueError(f"{what} does not implement {', '.join(missing)}; {fix}")
    name = getattr(cls, "name", None)
    params = getattr(cls, "Params", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} has no `name` (the family's name in study files); {fix}")
    if not (isinstance(params, type) and issubclass(params, FamilyParams)):
        raise ValueError(f"{what} has no `Params` subclass of FamilyParams; {fix}")
    tag = params.model_fields["family"].default
    if tag != name:
        raise ValueError(
            f"{what}: Params.family defaults to {tag!r} but the family's name is {name!r}; "
            f"declare `family: Literal[{name!r}] = {name!r}` in its Params"
        )
    return cls


def _register_plugin(cls: type[ModelFamily], origin: PluginOrigin, *, what: str) -> None:
    """Register a family from outside collapselab, refusing a name already taken by another."""
    taken = FAMILIES.get(cls.name)
    if taken is cls:
        return
    if taken is not None:
        owner = PLUGINS.get(cls.name)
        by = f"the plug-in {owner.import_path}" if owner else "a built-in family"
        raise ValueError(
            f"{what} is named {cls.name!r}, which {by} already uses; give the plug-in's class "
            "another `name`"
        )
    FAMILIES[cls.name] = cls
    PLUGINS[cls.name] = origin


def _import_family(path: str) -> type[ModelFamily]:
    """The family class at `module:ClassName`, from a module that is already importable."""
    if not _IMPORT_PATH.match(path):
        raise ValueError(
            f"model family {path[:80]!r} is not an import path; write `package.module:ClassName` "
            "(a module that is installed or on PYTHONPATH)"
        )
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"model family {path!r}: cannot import {module_name!r} ({exc}); install the package "
            "that provides it (pip install -e ...) or put it on PYTHONPATH"
        ) from None
    except Exception as exc:  # a plug-in's own bug at import time: still one line
        raise ValueError(
            f"model family {path!r}: importing {module_name!r} failed "
            f"({type(exc).__name__}: {_first_line(exc)}); fix the module"
        ) from None
    if not hasattr(module, class_name):
        raise ValueError(
            f"model family {path!r}: module {module_name!r} has no {class_name!r}; "
            "check the class name after the colon"
        )
    cls = _check_family(
        getattr(module, class_name),
        what=f"model family {path!r}",
        fix="name a class that subclasses collapselab.models.ModelFamily",
    )
    _register_plugin(
        cls, PluginOrigin(path, _distribution_of(module_name)), what=f"model family {path!r}"
    )
    return cls


def _load_entry_point(entry: EntryPoint) -> type[ModelFamily]:
    dist = _entry_point_distribution(entry)
    what = f"plug-in family {entry.name!r} ({entry.value}, package {dist or 'unknown'})"
    fix = f"fix or uninstall the package {dist.split()[0] if dist else ''}".rstrip()
    try:
        loaded = entry.load()
    except Exception as exc:  # a broken plug-in: one line, never its traceback
        raise ValueError(
            f"{what} cannot be loaded ({type(exc).__name__}: {_first_line(exc)}); {fix}"
        ) from None
    cls = _check_family(loaded, what=what, fix=fix)
    if cls.name != entry.name:
        raise ValueError(
            f"{what} is a family named {cls.name!r}: the entry point's name must be the "
            f"family's `name`; {fix}"
        )
    _register_plugin(cls, PluginOrigin(entry.value, dist), what=what)
    return cls


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _imported_family(name: str) -> type[ModelFamily] | None:
    """A family class already imported under `name` though not registered: a worker process
    that unpickled a run's parameters imported the plug-in's module, by the study's import path."""
    pending = list(ModelFamily.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if getattr(cls, "name", None) != name or getattr(cls, "__abstractmethods__", None):
            continue
        module = sys.modules.get(cls.__module__)
        if module is not None and getattr(module, cls.__qualname__, None) is cls:
            return cls  # a class its module still holds (not a leftover of a reloaded module)
    return None


def load_family(spec: str) -> type[ModelFamily]:
    """The family a study names: a registered name, an installed plug-in's entry-point name
    (group `collapselab.families`, loaded on first use) or `package.module:ClassName`.

    Raises ValueError with one line naming what is wrong and what to do."""
    if not isinstance(spec, str):
        raise ValueError(f"a model family is named by a string, got {type(spec).__name__}")
    known = FAMILIES.get(spec)
    if known is not None:
        return known
    if ":" in spec:
        return _import_family(spec)
    entry = _entry_points().get(spec)
    if entry is not None:
        return _load_entry_point(entry)
    imported = _imported_family(spec)
    if imported is not None:
        module = imported.__module__
        _register_plugin(
            imported,
            PluginOrigin(f"{module}:{imported.__qualname__}", _distribution_of(module)),
            what=f"model family {spec!r}",
        )
        return imported
    allowed = ", ".join(sorted(set(FAMILIES) | set(_entry_points())))
    raise ValueError(
        f"unknown model family {spec[:80]!r}; allowed: {allowed}, or an installed class as "
        "'package.module:ClassName'"
    )


def get_family(name: str) -> type[ModelFamily]:
    """The family registered under `name` (plug-ins resolved on first use, as load_family)."""
    return load_family(name)


def load_study_families(config: Mapping[str, Any]) -> dict[str, str]:
    """Register every family a study names, from the study as stored (the `studies` table's
    config: `family_imports` {name: 'module:Class'}, `models`, `collapse_thresholds`), so a later
    process (report, verdict) knows plug-ins before it asks the registry for every family.
    Returns {family: one-line problem} for those that cannot be loaded any more (a plug-in
    uninstalled since); the others are registered."""
    problems: dict[str, str] = {}
    imports = config.get("family_imports") or {}
    models = config.get("models") or []
    named = [m.get("family") for m in models if isinstance(m, Mapping)]
    named += list(config.get("collapse_thresholds") or {})
    wanted = {name: imports.get(name, name) for name in [*imports, *named] if isinstance(name, str)}
    for name, spec in wanted.items():
        if name in FAMILIES:
            continue
        try:
            family = load_family(spec)
        except ValueError as exc:
            problems[name] = str(exc)
            continue
        if family.name != name:
            problems[name] = f"{spec} is now a family named {family.name!r}, not {name!r}"
    return problems


def build_model(params: FamilyParams, context: RunContext | None = None) -> ModelFamily:
    """An unfitted model of the family that `params` names."""
    return get_family(params.family)(params, context=context)
