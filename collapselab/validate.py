"""`collapselab validate`: run a study's closed-form cases and test them against the literature.

A case is a (model, strategy, metric) of the study for which `theory.reference_curve` has a closed
form. Its runs go through the ordinary chain (`chain.run_many`, no Prefect, nothing stored), and
at every generation z = (simulated mean - prediction) / (Monte Carlo standard error). A case passes
when |z| < z_max at EVERY generation: the worst generation decides, because that is where an
off-by-one exponent or a wrong constant shows most (often the first generations, where the spread
is smallest). Simulation and comparison are separate functions so that a test can re-check the same
simulated runs against a deliberately wrong formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import polars as pl

from collapselab import theory
from collapselab.chain import RunOutcome, run_many
from collapselab.config import RunSpec, StudyConfig
from collapselab.tables import RunStatus

#: Two-sided per-generation threshold. With ~20 generations and ~10 cases a correct formula is
#: flagged by chance about once in a hundred validations (a probability of 6e-5 per comparison).
Z_MAX = 4.0

RESULT_COLUMNS = {
    "model": pl.String,
    "strategy": pl.String,
    "metric": pl.String,
    "reference": pl.String,
    "runs": pl.Int64,
    "degenerate": pl.Int64,
    "failed": pl.Int64,
    "generation": pl.Int64,
    "prediction": pl.Float64,
    "mean": pl.Float64,
    "se": pl.Float64,
    "z": pl.Float64,
    "worst_generation": pl.Int64,
    "worst_z": pl.Float64,
    "passed": pl.Boolean,
}


def replicates_to_test(z_max: float) -> int:
    """The fewest replicates per case at which validation can tell a wrong formula from chance:
    with R replicates the standard error is estimated, so a correct formula's z follows Student's
    t with R - 1 degrees of freedom, whose tails are heavier than the normal's that z_max is
    read against. This is the smallest R at which a correct formula fails a comparison by chance
    at most twice as often as |z| < z_max intends (95 at z_max = 4; 2 when z_max <= 1)."""
    from scipy import stats

    def too_few(replicates: int) -> bool:
        return float(stats.t.sf(z_max, replicates - 1)) > 2 * float(stats.norm.sf(z_max))

    high = 2
    while too_few(high):  # the tail shrinks as R grows: double, then bisect
        high *= 2
    low = high // 2 + 1 if high > 2 else 2
    while low < high:
        middle = (low + high) // 2
        if too_few(middle):
            low = middle + 1
        else:
            high = middle
    return high


def _curves(spec: RunSpec) -> dict[str, np.ndarray]:
    return theory.reference_curve(
        model=spec.model.model_dump(mode="json"),
        strategy=spec.strategy.model_dump(mode="json"),
        n=spec.n,
        generations=np.arange(spec.generations + 1),
    )


def closed_form_specs(study: StudyConfig) -> list[RunSpec]:
    """The study's runs whose (model, strategy) has at least one closed form, in grid order."""
    return [spec for spec in study.run_specs() if _curves(spec)]


def _case_key(spec: RunSpec) -> tuple[str, str, int, int]:
    """Runs that differ only by replicate: the replicates of one (model, strategy) case."""
    return (
        spec.model.model_dump_json(),
        spec.strategy.model_dump_json(),
        spec.n,
        spec.generations,
    )


def _observed(outcomes: list[RunOutcome], metric: str, absorbed: float | None) -> pl.DataFrame:
    """(generation, value) per replicate. A degenerate chain contributes its absorbing value after
    its fit degenerated when the law counts such chains, and nothing after it otherwise."""
    generations: list[int] = []
    values: list[float] = []
    for outcome in outcomes:
        if outcome.status == RunStatus.failed:
            continue
        seen = set()
        for g, name, value in outcome.metric_rows():
            if name == metric:
                generations.append(g)
                values.append(value)
                seen.add(g)
        if outcome.status == RunStatus.degenerate and absorbed is not None:
            missing = [g for g in range(outcome.spec.generations + 1) if g not in seen]
            generations.extend(missing)
            values.extend([absorbed] * len(missing))
    return pl.DataFrame(
        {"generation": generations, "value": values},
        schema={"generation": pl.Int64, "value": pl.Float64},
    )


def validate_outcomes(outcomes: list[RunOutcome], *, z_max: float = Z_MAX) -> pl.DataFrame:
    """One row per case (model, strategy, metric), in the order the runs came: the final
    generation's prediction, simulated mean, standard error and z; the worst generation and its
    z; `passed` when no run failed and |z| < z_max at every generation that has a z."""
    groups: dict[tuple[str, str, int, int], list[RunOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault(_case_key(outcome.spec), []).append(outcome)
    rows = []
    for group in groups.values():
        spec = group[0].spec
        model_json = spec.model.model_dump(mode="json")
        strategy_json = spec.strategy.model_dump(mode="json")
        final = spec.generations
        failed = sum(o.status == RunStatus.failed for o in group)
        for metric, expected in _curves(spec).items():
            absorbed = theory.value_after_degenerate(model=model_json, metric=metric)
            table = theory.deviation_table(_observed(group, metric, absorbed), expected)
            last = table.filter(pl.col("generation") == final)
            worst = table.sort(pl.col("z").abs(), descending=True).head(1)
            worst_z = float(worst["z"][0]) if worst.height else None
            rows.append(
                {
                    "model": spec.model.label(),
                    "strategy": spec.strategy.label(),
                    "metric": metric,
                    "reference": theory.describe_reference(
                        model=model_json, strategy=strategy_json, n=spec.n, metric=metric
                    ),
                    "runs": len(group),
                    "degenerate": sum(o.status == RunStatus.degenerate for o in group),
                    "failed": failed,
                    "generation": final,
                    "prediction": float(expected[final]),
                    "mean": float(last["mean"][0]) if last.height else None,
                    "se": float(last["se"][0]) if last.height else None,
                    "z": float(last["z"][0]) if last.height else None,
                    "worst_generation": int(worst["generation"][0]) if worst.height else None,
                    "worst_z": worst_z,
                    "passed": failed == 0 and worst_z is not None and abs(worst_z) < z_max,
                }
            )
    return pl.DataFrame(rows, schema=RESULT_COLUMNS)


def validate_study(
    study: StudyConfig,
    *,
    z_max: float = Z_MAX,
    progress: Callable[[int, int, RunSpec], None] | None = None,
) -> pl.DataFrame:
    """Run every closed-form case of `study` in this process and test it (see
    `validate_outcomes`). `progress(done, total, spec)` is called before each (model, strategy)
    batch of runs. Nothing is stored: validation checks the code, not a study's results."""
    specs = closed_form_specs(study)
    batches: dict[tuple[str, str, int, int], list[RunSpec]] = {}
    for spec in specs:
        batches.setdefault(_case_key(spec), []).append(spec)
    outcomes: list[RunOutcome] = []
    for batch in batches.values():
        if progress is not None:
            progress(len(outcomes), len(specs), batch[0])
        outcomes.extend(run_many(batch))
    return validate_outcomes(outcomes, z_max=z_max)


def _number(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def table_rows(frame: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of a `validate_outcomes` table (shared by text and rich)."""
    headers = ["model", "strategy", "metric", "t", "predicted", "simulated", "SE", "z",
               "worst z (t)", "runs", "result"]  # fmt: skip
    cells = []
    for row in frame.iter_rows(named=True):
        worst = (
            "-" if row["worst_z"] is None else f"{row['worst_z']:+.2f} ({row['worst_generation']})"
        )
        notes = [f"{row['degenerate']} degenerate"] if row["degenerate"] else []
        notes += [f"{row['failed']} FAILED"] if row["failed"] else []
        cells.append(
            [
                row["model"],
                row["strategy"],
                row["metric"],
                str(row["generation"]),
                _number(row["prediction"]),
                _number(row["mean"]),
                _number(row["se"]),
                "-" if row["z"] is None else f"{row['z']:+.2f}",
                worst,
                f"{row['runs']}" + (f" ({', '.join(notes)})" if notes else ""),
                "pass" if row["passed"] else "FAIL",
            ]
        )
    return headers, cells


def references(frame: pl.DataFrame) -> list[tuple[str, str]]:
    """(metric, formula with its constants) of each case, without repeats."""
    return frame.select("metric", "reference").unique(maintain_order=True).rows()


def format_table(frame: pl.DataFrame) -> str:
    """A plain-text table of a `validate_outcomes` result, one case a line, then each case's
    formula."""
    headers, cells = table_rows(frame)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines += [f"  {metric}: {reference}" for metric, reference in references(frame)]
    return "\n".join(line.rstrip() for line in lines)
