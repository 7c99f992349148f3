"""Study files: validated with pydantic before any compute, then expanded into run specs.

A study is the grid models x strategies x replicates. Each cell is a `RunSpec` whose `run_id` hashes
its full parameters and whose random seeds derive from the study seed and the run's identity
(numpy SeedSequence), never from its position in the grid: the same run gets the same numbers
whatever the runner, the order or the retry.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    NonNegativeInt,
    PlainValidator,
    PositiveInt,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from collapselab.models import FAMILIES, FamilyParams, build_model, get_family, load_family
from collapselab.onset import threshold_from_mapping
from collapselab.strategies import STRATEGIES, build_strategy
from collapselab.strategies import StrategyParams as AnyStrategyParams

if TYPE_CHECKING:
    from collapselab.onset import Threshold


def _model_params(value: Any) -> FamilyParams:
    """A `models` entry, validated by the Params of the family it names, resolved per entry
    (load_family: built in, an installed plug-in or `module:ClassName`), so a family registered
    after this module was imported validates like a built-in one. Errors keep the family's name
    in their location, as a discriminated union puts its tag (format_error drops it)."""
    if isinstance(value, FamilyParams):
        if FAMILIES.get(value.family) is not None and type(value) is FAMILIES[value.family].Params:
            return value  # validated when it was built (a RunSpec of a study's grid)
        value = value.model_dump()  # any other instance is checked as its fields
    if not isinstance(value, Mapping):
        raise PydanticCustomError(
            "model_type",
            "a model is a mapping with `family` and that family's parameters, got {kind}",
            {"kind": type(value).__name__},
        )
    spec = value.get("family")
    if spec is None:
        raise PydanticCustomError(
            "missing_family",
            "missing `family`; allowed: {allowed}",
            {"allowed": ", ".join(sorted(FAMILIES))},
        )
    try:
        family = load_family(spec) if isinstance(spec, str) else None
    except ValueError as exc:
        raise _family_error(str(exc), spec) from None
    if family is None:
        raise _family_error(f"a family is named by a string, got {type(spec).__name__}", spec)
    try:
        return family.Params.model_validate({**value, "family": family.name})
    except ValidationError as exc:
        raise ValidationError.from_exception_data(
            exc.title,
            [
                _error_detail(error["type"], error["msg"], (family.name, *error["loc"]), error)
                for error in exc.errors()
            ],
        ) from None


def _error_detail(
    kind: str, message: str, loc: tuple[str | int, ...], error: Mapping[str, Any]
) -> InitErrorDetails:
    """One validation error as pydantic re-raises it, with its message as written (braces
    escaped: it is already formatted) and its context kept for format_error."""
    template = message.replace("{", "{{").replace("}", "}}")
    return InitErrorDetails(
        type=PydanticCustomError(kind, template, dict(error.get("ctx") or {})),
        loc=loc,
        input=error.get("input"),
    )


def _family_error(message: str, spec: Any) -> ValidationError:
    return ValidationError.from_exception_data(
        "model", [_error_detail("unknown_family", message, ("family",), {"input": spec})]
    )


#: A `models` entry: the Params of its family (a plug-in's too), dumped with all its fields.
ModelParams = Annotated[SerializeAsAny[FamilyParams], PlainValidator(_model_params)]


def _strategy_mapping(value: Any) -> Any:
    """A strategy may be written as a bare name: `replace` means `{name: replace}`."""
    return {"name": value} if isinstance(value, str) else value


if TYPE_CHECKING:
    StrategyParams = AnyStrategyParams
else:  # the built-in strategies, as a union tagged by `name`
    StrategyParams = Annotated[
        Union[tuple(cls.Params for cls in STRATEGIES.values())],  # noqa: UP007
        Field(discriminator="name"),
        BeforeValidator(_strategy_mapping),
    ]


class StudyError(ValueError):
    """A study that cannot run: one line naming the field and what is allowed."""


class CollapseThreshold(BaseModel):
    """A collapse indicator in a study file: `{metric, below|above: value, relative}`; with
    `relative: true` the value is a factor of the run's generation-0 value, or of the mean of its
    first `baseline` generations. `trend`, `persistence`, `confidence` and `agree` override the
    onset and early-warning settings for this indicator alone (collapselab.onset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    below: Annotated[float, Field(allow_inf_nan=False)] | None = None
    above: Annotated[float, Field(allow_inf_nan=False)] | None = None
    relative: bool = False
    baseline: Annotated[int, Field(ge=1)] = 1
    trend: Literal["log", "linear"] = "log"
    persistence: Annotated[int, Field(ge=1)] | None = None
    confidence: Annotated[float, Field(gt=0, lt=1)] | None = None
    agree: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _one_direction(self) -> CollapseThreshold:
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of `below` or `above`")
        value = self.below if self.below is not None else self.above
        if self.relative and value is not None and value <= 0:
            raise ValueError(
                f"a relative threshold is a factor of generation 0's value: > 0, got {value}"
            )
        return self

    def threshold(self) -> Threshold:
        return threshold_from_mapping(self.model_dump())


class StudyConfig(BaseModel):
    """A study file. `generations: G` means models 0..G; model 0 trains on n real points."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    seed: NonNegativeInt
    generations: PositiveInt
    replicates: PositiveInt
    samples_per_generation: int = Field(ge=2)
    #: Held-out real points per run, drawn once and never trained on.
    test_size: PositiveInt = 1000
    #: Families the study names by import path, {name: "package.module:ClassName"}: filled in
    #: from `family: "package.module:ClassName"` entries (which then read `family: <name>`) and
    #: kept in the stored study, so a later process (report, verdict) imports them again
    #: (collapselab.models.load_families). Validated before `models`, which may name them.
    family_imports: dict[str, str] = Field(default_factory=dict)
    models: list[ModelParams] = Field(min_length=1)
    strategies: list[StrategyParams] = Field(min_length=1)
    #: Collapse indicators per family, replacing that family's defaults (collapselab.onset).
    #: An analysis setting, not a run parameter: it is in no RunSpec, so no run id or seed moves.
    collapse_thresholds: dict[str, list[CollapseThreshold]] = Field(default_factory=dict)
    #: Limits of the study's estimated peak memory and database growth (`8GB`, `500MiB`; None:
    #: DEFAULT_MAX_MEMORY / DEFAULT_MAX_DATABASE). Checked by `check_budget` before any compute;
    #: `collapselab run --max-memory` overrides `max_memory`. In no RunSpec: no run id moves.
    max_memory: ByteSize | None = None
    max_database: ByteSize | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_imported_families(cls, data: Any) -> Any:
        """`family: "package.module:ClassName"` (in `models` and as a `collapse_thresholds` key)
        becomes the family's registered name, recorded in `family_imports`: run ids and stored
        runs then carry the name, whichever way the study wrote it. A path that cannot be loaded
        is left as written, for the field's own validation to report."""
        if not isinstance(data, dict):
            return data
        imports = data.get("family_imports")
        found: dict[str, str] = dict(imports) if isinstance(imports, dict) else {}

        def named(spec: Any) -> Any:
            if not (isinstance(spec, str) and ":" in spec):
                return spec
            try:
                family = load_family(spec)
            except ValueError:
                return spec
            found[family.name] = spec
            return family.name

        changed = dict(data)
        models = data.get("models")
        if isinstance(models, list):
            changed["models"] = [
                {**entry, "family": named(entry.get("family"))}
                if isinstance(entry, dict)
                else entry
                for entry in models
            ]
        thresholds = data.get("collapse_thresholds")
        if isinstance(thresholds, dict):
            changed["collapse_thresholds"] = {named(k): v for k, v in thresholds.items()}
        if found:
            changed["family_imports"] = found
        return changed

    @field_validator("family_imports")
    @classmethod
    def _load_imports(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            family = load_family(path)
            if family.name != name:
                raise ValueError(f"{name}: {path} is a family named {family.name!r}")
        return value

    @field_validator("collapse_thresholds")
    @classmethod
    def _check_thresholds(
        cls, value: dict[str, list[CollapseThreshold]]
    ) -> dict[str, list[CollapseThreshold]]:
        for family, entries in value.items():
            names = load_family(family).metric_names
            for i, entry in enumerate(entries):
                if entry.metric not in names:
                    raise ValueError(
                        f"{family}[{i}].metric {entry.metric!r} is not a {family} metric; "
                        f"allowed: {', '.join(names)}"
                    )
        return value

    @model_validator(mode="after")
    def _check_grid(self) -> StudyConfig:
        for field, labels in (
            ("models", [m.label() for m in self.models]),
            ("strategies", [s.label() for s in self.strategies]),
        ):
            seen = {label for label in labels if labels.count(label) > 1}
            if seen:
                raise ValueError(f"{field} lists {sorted(seen)[0]} twice; each entry must differ")
        for model in self.models:
            capacity = build_model(model).real_data().capacity(self.test_size)
            if capacity is None:
                continue
            for strategy in self.strategies:
                needed = build_strategy(strategy).real_points_needed(
                    n=self.samples_per_generation, generations=self.generations
                )
                if needed > capacity:
                    raise ValueError(
                        f"strategy {strategy.label()} needs {needed} real training points for "
                        f"{self.generations} generations but {model.label()} has only {capacity} "
                        f"after holding out test_size={self.test_size}"
                    )
        return self

    @property
    def run_count(self) -> int:
        """Runs in the grid, counted without building them."""
        return len(self.models) * len(self.strategies) * self.replicates

    def iter_run_specs(self) -> Iterator[RunSpec]:
        """Every run of the study, one at a time: models x strategies x replicates."""
        for model in self.models:
            for strategy in self.strategies:
                for replicate in range(self.replicates):
                    yield RunSpec(
                        study=self.name,
                        seed=self.seed,
                        generations=self.generations,
                        n=self.samples_per_generation,
                        test_size=self.test_size,
                        model=model,
                        strategy=strategy,
                        replicate=replicate,
                    )

    def run_specs(self) -> list[RunSpec]:
        """Every run of the study as a list (call `check_budget` first on an untrusted study:
        a list of 10^7 specs alone takes tens of GB)."""
        return list(self.iter_run_specs())


def _digest(payload: Any) -> bytes:
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    ).digest()


def _seed_sequence(seed: int, payload: Any) -> np.random.SeedSequence:
    words = np.frombuffer(_digest(payload)[:16], dtype=np.uint32)
    return np.random.SeedSequence(seed, spawn_key=tuple(int(w) for w in words))


class RunSpec(BaseModel):
    """One chain: a model family under one strategy, one replicate, generations 0..G."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str
    seed: int
    generations: int
    n: int
    test_size: int
    model: ModelParams
    strategy: StrategyParams
    replicate: int

    @property
    def results_versions(self) -> dict[str, int]:
        """The results versions of the run's family and strategy: bumped by the code when their
        numbers change for the same parameters (ModelFamily / Strategy `results_version`)."""
        return {
            "model": get_family(self.model.family).results_version,
            "strategy": STRATEGIES[self.strategy.name].results_version,
        }

    @property
    def run_id(self) -> str:
        """Hash of the run's full parameters and of any results version above 1 (code version
        otherwise excluded): a family or strategy that changes its numbers re-runs its runs, and
        runs at version 1 keep the ids they always had. The seeds leave the versions out."""
        payload = self.model_dump(mode="json")
        for part, version in self.results_versions.items():
            if version > 1:
                payload[f"{part}_results_version"] = version
        return _digest(payload).hex()[:20]

    def real_seed(self, data_key: str) -> np.random.SeedSequence:
        """R0, fresh real points and the test set: shared by every strategy of a replicate
        (common random numbers), keyed by the real data itself and the replicate."""
        return _seed_sequence(self.seed, ["real-data", data_key, self.replicate])

    def metric_seed(self) -> np.random.SeedSequence:
        """Monte Carlo metrics: keyed like the real data plus the model, NOT the strategy, so the
        same fitted model scores the same under every strategy (common random numbers)."""
        payload = self.model_dump(mode="json", include={"model", "n", "test_size", "replicate"})
        return _seed_sequence(self.seed, ["metrics", payload])

    def chain_seed(self) -> np.random.SeedSequence:
        """The chain's own draws. `generations` and the study name are left out, so a longer
        study reproduces a shorter one's generations exactly."""
        payload = self.model_dump(mode="json", exclude={"study", "generations", "seed"})
        return _seed_sequence(self.seed, ["chain", payload])


# --- budgets: memory and database growth, estimated from the grid before any compute --------

GB = 2**30
#: Limits a study must fit unless it raises them (`max_memory:` / `max_database:` in the study
#: file, or `collapselab run --max-memory`); the memory limit is at least DEFAULT_MAX_MEMORY and
#: at least half the machine's memory (default_max_memory).
DEFAULT_MAX_MEMORY = 8 * GB
DEFAULT_MAX_DATABASE = 20 * GB
#: The flow process holds a RunSpec, its run id and its bookkeeping per run of the grid.
FLOW_BYTES_PER_RUN = 4096
#: A recorded metric value (a dict entry in a worker, a row in flight to the database).
BYTES_PER_METRIC_IN_MEMORY = 150
#: Database growth: a run's row (its parameters as JSON), a metric row, compressed by DuckDB.
DB_BYTES_PER_RUN = 2048
DB_BYTES_PER_METRIC = 48
#: A run's fixed cost in a worker beyond its data: its outcome, fitted estimator objects, pydantic
#: models and numpy temporaries of small arrays (measured: 1-2 MiB for a small run).
RUN_OVERHEAD_BYTES = 4 * 2**20
#: Metrics every generation records besides its family's own (chain._generation_metrics).
GENERIC_METRICS = 2


def default_max_memory() -> int:
    """The memory limit of a study that sets none: half the machine's memory, at least 8 GiB
    (workers scale with the cores, and a machine with many cores has the memory for them)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 0
    return max(DEFAULT_MAX_MEMORY, physical // 2)


def _size(count: float) -> str:
    if count >= GB:
        return f"{count / GB:.1f} GiB"
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count / 2**10:.0f} KiB"


def _round_up_gb(count: float) -> str:
    return f"{int(-(-count // GB)) + 1}GiB"


@dataclass(frozen=True)
class Budget:
    """A study's estimated peak memory and database growth, with the part that dominates
    each (the field to lower and a description): what `check_budget` compares to the limits."""

    runs: int
    workers: int
    flow_bytes: int
    worker_bytes: int
    memory_field: str
    memory_part: str
    database_bytes: int
    database_field: str

    @property
    def memory_bytes(self) -> int:
        return self.flow_bytes + self.workers * self.worker_bytes


#: Most runs one task carries (flows.local.plan_batches).
MAX_BATCH_RUNS = 250
#: The batched engine advances as many replicates of a cell together as fit in this many bytes
#: (`batch_replicates`): enough for array code to pay off, small enough that a long accumulating
#: chain's pools of points stay bounded in every worker.
BATCH_BYTES = 256 * 2**20


def batch_replicates(
    model: Any, strategy: Any, *, n: int, generations: int, test_size: int
) -> tuple[int, int]:
    """(replicates the engine advances together, estimated bytes per replicate) for a cell: 1
    where the family or the strategy has no batched path."""
    family = get_family(model.family)
    built = build_strategy(strategy)
    if family.Batched is None or not built.batches():
        return 1, 0
    point = family.point_bytes(model)
    if built.incremental and family.Batched.incremental:
        held, train = 3 * n, n  # a running summary of the pool: no pool of points
    else:
        held = built.held_points(n=n, generations=generations)
        train = built.max_train_points(n=n, generations=generations)
    working = family.working_bytes(model, train_points=train, n=n, test_size=test_size)
    metrics = (len(family.metric_names) + GENERIC_METRICS) * (generations + 1)
    per_replicate = held * point + working + 8 * metrics
    return max(1, min(MAX_BATCH_RUNS, BATCH_BYTES // per_replicate)), per_replicate


def estimate_budget(config: StudyConfig, *, workers: int) -> Budget:
    """Peak memory of the flow process and of each worker, and database growth, from the grid
    alone: each family estimates its own working memory (ModelFamily.working_bytes) and point
    size, each strategy the points it holds and its largest training set. Nothing is built."""
    n, g, runs = config.samples_per_generation, config.generations, config.run_count
    workers = max(1, workers)
    worst = (0, "", "")
    metric_rows = 0
    for i, model in enumerate(config.models):
        family = get_family(model.family)
        metrics = (len(family.metric_names) + GENERIC_METRICS) * (g + 1)
        metric_rows = max(metric_rows, metrics)
        base = family.working_bytes(model, train_points=n, n=n, test_size=config.test_size)
        for strategy_params in config.strategies:
            strategy = build_strategy(strategy_params)
            train = strategy.max_train_points(n=n, generations=g)
            working = family.working_bytes(
                model, train_points=train, n=n, test_size=config.test_size
            )
            history = strategy.held_points(n=n, generations=g) * family.point_bytes(model)
            parts = [
                (base, f"models[{i}]", f"{model.label()} fits and metrics"),
                (
                    history + working - base,
                    "generations",
                    f"{strategy_params.label()} keeps {n} x {g + 1} points of {model.label()}",
                ),
                (
                    metrics * BYTES_PER_METRIC_IN_MEMORY,
                    "generations",
                    f"{metrics} metric values of {g + 1} generations",
                ),
            ]
            # the batched engine holds a batch's replicates at once (collapselab.engine), as many
            # as BATCH_BYTES allows; the per-run path (and its fallback) holds one run at a time
            total = RUN_OVERHEAD_BYTES + sum(part[0] for part in parts)
            batch, replicate = batch_replicates(
                model, strategy_params, n=n, generations=g, test_size=config.test_size
            )
            batch = min(batch, config.replicates)
            if batch > 1 and RUN_OVERHEAD_BYTES + batch * replicate > total:
                total = RUN_OVERHEAD_BYTES + batch * replicate
                parts = [(total, "replicates", f"{batch} replicates of {max(parts)[2]}")]
            if total > worst[0]:
                _, field, part = max(parts)
                worst = (total, field, part)
    flow_runs = runs * FLOW_BYTES_PER_RUN
    flow_results = 2 * workers * metric_rows * BYTES_PER_METRIC_IN_MEMORY
    worker_bytes, field, part = worst
    if flow_runs > workers * worker_bytes:
        field, part = "replicates", f"{runs} run specs in the flow process"
    database = runs * (DB_BYTES_PER_RUN + metric_rows * DB_BYTES_PER_METRIC)
    return Budget(
        runs=runs,
        workers=workers,
        flow_bytes=flow_runs + flow_results,
        worker_bytes=worker_bytes,
        memory_field=field,
        memory_part=part,
        database_bytes=database,
        database_field="replicates" if runs * DB_BYTES_PER_RUN >= database / 2 else "generations",
    )


def check_budget(
    config: StudyConfig, *, workers: int, max_memory: int | None = None, source: str = "study"
) -> Budget:
    """Refuse a study whose estimated peak memory or database growth is above its limit, with
    one line naming the field to lower and the estimate; return the budget otherwise.
    `max_memory` (the CLI's --max-memory) overrides the study's own `max_memory`."""
    budget = estimate_budget(config, workers=workers)
    limit = max_memory or config.max_memory or default_max_memory()
    if budget.memory_bytes > limit:
        raise StudyError(
            f"{source}: {budget.memory_field}: estimated peak memory "
            f"{_size(budget.memory_bytes)} (flow process {_size(budget.flow_bytes)} + "
            f"{budget.workers} worker(s) x {_size(budget.worker_bytes)}; largest part: "
            f"{budget.memory_part}) is above the limit {_size(limit)}; lower "
            f"{budget.memory_field}, or raise the limit with `max_memory: "
            f"{_round_up_gb(budget.memory_bytes)}` in the study file or `collapselab run "
            f"--max-memory {_round_up_gb(budget.memory_bytes)}`"
        )
    limit = config.max_database or DEFAULT_MAX_DATABASE
    if budget.database_bytes > limit:
        raise StudyError(
            f"{source}: {budget.database_field}: estimated database growth "
            f"{_size(budget.database_bytes)} ({budget.runs} runs) is above the limit "
            f"{_size(limit)}; lower {budget.database_field}, or raise the limit with "
            f"`max_database: {_round_up_gb(budget.database_bytes)}` in the study file"
        )
    return budget


def parse_byte_size(text: str) -> int:
    """`8GB`, `512MiB`, `2000000000`: a memory limit as the CLI and study files write it."""
    try:
        return int(TypeAdapter(ByteSize).validate_python(text.strip()))
    except ValidationError:
        raise StudyError(
            f"not a memory size: {_excerpt(text)!r}; write e.g. 8GB, 16GiB or 500MB"
        ) from None


# --- reading study files ----------------------------------------------------------------------


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where an unknown key `loc` was found."""
    fields: dict[str, Any] = dict(StudyConfig.model_fields)
    if len(loc) >= 3 and loc[0] == "models" and loc[2] in FAMILIES:  # the family's name
        fields = dict(FAMILIES[loc[2]].Params.model_fields)
    elif len(loc) >= 3 and loc[0] == "strategies" and loc[2] in STRATEGIES:
        fields = dict(STRATEGIES[loc[2]].Params.model_fields)
    elif len(loc) >= 4 and loc[0] == "collapse_thresholds":
        fields = dict(CollapseThreshold.model_fields)
    return sorted(fields)


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for i, part in enumerate(loc):
        # Discriminated unions insert the tag (`gaussian`, `replace`) after the list index.
        tagged = i == 2 and loc[0] in ("models", "strategies")
        if tagged and (part in FAMILIES or part in STRATEGIES):
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "study"


#: A study file is a page of YAML: these bound what reading one may cost.
MAX_STUDY_BYTES = 1_000_000
#: Values after expanding aliases (a "billion laughs" file is a few lines of anchors).
MAX_YAML_NODES = 100_000
MAX_YAML_CHARS = 10_000_000
#: Characters of the input an error message may quote.
EXCERPT_CHARS = 60
#: An error line longer than this is cut (a message never carries the input itself).
MAX_MESSAGE_CHARS = 600


def _excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(message: str) -> str:
    message = " ".join(message.split("\n"))
    return (
        message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."
    )


def format_error(error: Mapping[str, Any]) -> str:
    """One line: the field, what is wrong, and what is allowed; the input is quoted only as a
    short excerpt."""
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        where = _field_path(loc[:-1])
        scope = f"in {where}" if loc[:-1] else "at top level"
        allowed = _allowed_keys(loc)
        key = _excerpt(str(loc[-1]), 40)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return (
            f"{_field_path(loc)}: unknown key {key!r}{hint}; allowed keys {scope}: "
            f"{', '.join(allowed)}"
        )
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return (
            f"{_field_path(loc)}.{ctx.get('discriminator', '').strip(chr(39))}: unknown "
            f"{_excerpt(repr(ctx.get('tag')), 40)}; allowed: {ctx.get('expected_tags')}"
        )
    if kind == "union_tag_not_found":
        key = error.get("ctx", {}).get("discriminator", "").strip("'")
        return f"{_field_path(loc)}: missing `{key}`; allowed: {', '.join(sorted(STRATEGIES))}"
    message = error["msg"].removeprefix("Value error, ")
    shown = error.get("input")
    quoted = isinstance(shown, dict) or kind in ("missing", "unknown_family", "model_type")
    got = "" if quoted else f" (got {_excerpt(repr(shown))})"
    return f"{_field_path(loc)}: {message}{got}"


def parse_study(data: Any, *, source: str = "study") -> StudyConfig:
    """Validate a parsed study mapping; raise StudyError with one line: an unknown key first
    (a typo explains the other problems, such as a required key missing), then the others."""
    if not isinstance(data, dict):
        raise StudyError(
            f"{source}: a study must be a mapping (name, seed, ...), got {type(data).__name__}"
        )
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise StudyError(_one_line(f"{source}: {format_error(errors[0])}{more}")) from None
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
        # a value no validator anticipated (numpy on a pathological matrix, say): still one line
        raise StudyError(
            _one_line(
                f"{source}: cannot validate the study ({type(exc).__name__}: "
                f"{_excerpt(str(exc), 200)})"
            )
        ) from None


class _StudyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a key given twice in one mapping is an error (with its
    line), not a silent overwrite."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults`: later keys may override merged ones
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, line, seen[key])
                    seen[key] = line
                except TypeError:
                    continue  # unhashable: the safe loader reports it
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(
            f"line {line}: duplicate key {_excerpt(str(key), 40)!r} (first given at line {first}); "
            "give each key once"
        )


def _expanded_size(node: yaml.Node) -> tuple[int, int]:
    """Values and scalar characters of `node` with every alias expanded, computed on the shared
    node graph (each node once), so a "billion laughs" file is measured, never built."""
    memo: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def size(current: yaml.Node) -> tuple[int, int]:
        key = id(current)
        if key in memo:
            return memo[key]
        if key in active:
            raise StudyError("an alias refers to a value that contains it (a recursive alias)")
        active.add(key)
        if isinstance(current, yaml.ScalarNode):
            result = (1, len(current.value))
        else:
            children = (
                [part for pair in current.value for part in pair]
                if isinstance(current, yaml.MappingNode)
                else current.value
            )
            nodes, chars = 1, 0
            for child in children:
                child_nodes, child_chars = size(child)
                nodes, chars = nodes + child_nodes, chars + child_chars
                if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
                    break  # already too big: stop counting
            result = (nodes, chars)
        active.discard(key)
        memo[key] = result
        return result

    return size(node)


_TAG = re.compile(r"could not determine a constructor for the tag '([^']*)'")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, in one line, quoting at most a short excerpt of the input."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"unacceptable character #x{exc.character:04x} at byte {exc.position}: {exc.reason}"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = str(getattr(exc, "problem", None) or exc)
    if tag := _TAG.search(problem):
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return (
            f"{where}tag {_excerpt(name, 50)} is not allowed: a study holds only mappings, "
            "lists, strings, numbers and booleans (unsafe tags are never constructed)"
        )
    return f"{where}not valid YAML ({_excerpt(problem, 100)})"


def read_study_yaml(raw: bytes, *, source: str = "study") -> Any:
    """Parse a study file's bytes with bounded cost: size, encoding, aliases and keys are
    checked, and every failure is one StudyError line that quotes at most a short excerpt."""
    if len(raw) > MAX_STUDY_BYTES:
        raise StudyError(
            f"{source}: {len(raw)} bytes; a study file is at most {MAX_STUDY_BYTES} bytes"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StudyError(
            f"{source}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save the study file as UTF-8"
        ) from None
    loader: _StudyLoader | None = None
    try:
        loader = _StudyLoader(text)  # its reader already rejects control characters
        node = loader.get_single_node()
        if node is None:
            return None
        nodes, chars = _expanded_size(node)
        if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
            raise StudyError(
                f"more than {MAX_YAML_NODES} values or {MAX_YAML_CHARS} characters once aliases "
                "are expanded (an alias bomb?); write the study out without nested aliases"
            )
        return loader.construct_document(node)
    except StudyError as exc:
        raise StudyError(_one_line(f"{source}: {exc}")) from None
    except _DuplicateKey as exc:
        raise StudyError(_one_line(f"{source}: {exc}")) from None
    except yaml.YAMLError as exc:
        raise StudyError(_one_line(f"{source}: {_yaml_problem(exc)}")) from None
    except RecursionError:
        raise StudyError(f"{source}: not valid YAML (nested too deeply)") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a scalar the resolver cannot convert
        raise StudyError(
            _one_line(f"{source}: not valid YAML (a value cannot be read: {_excerpt(str(exc))})")
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_study(path: str | Path) -> tuple[StudyConfig, str]:
    """Read and validate a study YAML file; returns the study and its text (echoed in reports).
    Reading is bounded (read_study_yaml); the budget is checked separately (check_budget)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_STUDY_BYTES + 1)
    except OSError as exc:
        raise StudyError(f"{path}: cannot read study file ({exc.strerror})") from None
    data = read_study_yaml(raw, source=str(path))
    return parse_study(data, source=str(path)), raw.decode("utf-8-sig")
