"""Study files: validated with pydantic before any compute, then expanded into run specs.

A study is the grid models x strategies x replicates. Each cell is a `RunSpec` whose `run_id` hashes
its full parameters and whose random seeds derive from the study seed and the run's identity
(numpy SeedSequence), never from its position in the grid: the same run gets the same numbers
whatever the runner, the order or the retry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from collapselab.models import FAMILIES, build_model
from collapselab.onset import Threshold, threshold_from_mapping, thresholds_from_config
from collapselab.strategies import STRATEGIES, build_strategy

ModelParams = Annotated[
    Union[tuple(cls.Params for cls in FAMILIES.values())],  # noqa: UP007  (built from the registry)
    Field(discriminator="family"),
]


def _strategy_mapping(value: Any) -> Any:
    """A strategy may be written as a bare name: `replace` means `{name: replace}`."""
    return {"name": value} if isinstance(value, str) else value


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
    models: list[ModelParams] = Field(min_length=1)
    strategies: list[StrategyParams] = Field(min_length=1)
    #: Collapse indicators per family, replacing that family's defaults (collapselab.onset).
    #: An analysis setting, not a run parameter: it is in no RunSpec, so no run id or seed moves.
    collapse_thresholds: dict[str, list[CollapseThreshold]] = Field(default_factory=dict)

    @field_validator("collapse_thresholds")
    @classmethod
    def _check_thresholds(
        cls, value: dict[str, list[CollapseThreshold]]
    ) -> dict[str, list[CollapseThreshold]]:
        for family, entries in value.items():
            if family not in FAMILIES:
                allowed = ", ".join(sorted(FAMILIES))
                raise ValueError(f"unknown family {family!r}; allowed: {allowed}")
            names = FAMILIES[family].metric_names
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

    def onset_thresholds(self) -> dict[str, list[Threshold]]:
        """Every family's collapse indicators: the defaults with this study's overrides."""
        return thresholds_from_config(self.model_dump(mode="json"))

    def run_specs(self) -> list[RunSpec]:
        """Every run of the study: models x strategies x replicates."""
        return [
            RunSpec(
                study=self.name,
                seed=self.seed,
                generations=self.generations,
                n=self.samples_per_generation,
                test_size=self.test_size,
                model=model,
                strategy=strategy,
                replicate=replicate,
            )
            for model in self.models
            for strategy in self.strategies
            for replicate in range(self.replicates)
        ]


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
            "model": FAMILIES[self.model.family].results_version,
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


# --- reading study files ----------------------------------------------------------------------


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where an unknown key `loc` was found."""
    fields: dict[str, Any] = dict(StudyConfig.model_fields)
    if len(loc) >= 3 and loc[0] == "models" and loc[2] in FAMILIES:
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


def format_error(error: dict[str, Any]) -> str:
    """One line: the field, what is wrong, and what is allowed."""
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        where = _field_path(loc[:-1])
        scope = f"in {where}" if loc[:-1] else "at top level"
        allowed = ", ".join(_allowed_keys(loc))
        return f"{_field_path(loc)}: unknown key; allowed keys {scope}: {allowed}"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return (
            f"{_field_path(loc)}.{ctx.get('discriminator', '').strip(chr(39))}: unknown "
            f"{ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
        )
    if kind == "union_tag_not_found":
        key = error.get("ctx", {}).get("discriminator", "").strip("'")
        allowed = ", ".join(sorted(FAMILIES if key == "family" else STRATEGIES))
        return f"{_field_path(loc)}: missing `{key}`; allowed: {allowed}"
    message = error["msg"].removeprefix("Value error, ")
    shown = error.get("input")
    got = "" if isinstance(shown, dict) or kind == "missing" else f" (got {shown!r})"
    return f"{_field_path(loc)}: {message}{got}"


def parse_study(data: Any, *, source: str = "study") -> StudyConfig:
    """Validate a parsed study mapping; raise StudyError with one line per problem."""
    if not isinstance(data, dict):
        raise StudyError(
            f"{source}: a study must be a mapping (name, seed, ...), got {type(data).__name__}"
        )
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise StudyError(f"{source}: {format_error(errors[0])}{more}") from None


def load_study(path: str | Path) -> tuple[StudyConfig, str]:
    """Read and validate a study YAML file; returns the study and its text (echoed in reports)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StudyError(f"{path}: cannot read study file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise StudyError(f"{path}: not valid YAML{where}") from None
    return parse_study(data, source=str(path)), text
