"""How each metric is presented, read from the family that reports it.

A family declares its metrics' title, unit, direction, meaning and domain
(`ModelFamily.metrics_info`); the generic ones every run records come from
`base.GENERIC_METRICS`. The report names no family: a metric of a plug-in it does not know, or of
a family no longer installed, is shown under its raw name, so the page still renders.
"""

from __future__ import annotations

from collections.abc import Iterable

from collapselab.models import ModelFamily, get_family
from collapselab.models.base import GENERIC_METRICS, MetricInfo

__all__ = [
    "MetricInfo",
    "better_text",
    "describe_metric",
    "family_problem",
    "installed_family",
    "metric_order",
]


def installed_family(family: str) -> type[ModelFamily] | None:
    """The family registered under `family`, or None when no installed package provides it
    (runs stored by a plug-in since uninstalled): the report then draws what it can, and says
    why (`family_problem`)."""
    return None if family_problem(family) else get_family(family)


def family_problem(family: str) -> str | None:
    """Why `family` cannot be loaded here (get_family's one-line message), or None."""
    try:
        get_family(family)
    except ValueError as exc:
        return str(exc)
    return None


def _declared(family: str) -> dict[str, MetricInfo]:
    cls = installed_family(family)
    return dict(cls.metrics_info) if cls is not None else {}


def describe_metric(family: str, metric: str) -> MetricInfo:
    """The presentation of `metric` as `family` reports it, then as every run records it; any
    other metric is shown under its raw name."""
    return (
        _declared(family).get(metric)
        or GENERIC_METRICS.get(metric)
        or MetricInfo(title=metric, axis_label=metric, unit="", meaning=metric, better="neither")
    )


def metric_order(family: str, names: Iterable[str]) -> list[str]:
    """The family's metrics in its own order (most telling first), then the generic ones, then
    the rest by name."""
    present = set(names)
    declared = _declared(family)
    known = [*declared, *(m for m in GENERIC_METRICS if m not in declared)]
    ordered = [m for m in known if m in present]
    return ordered + sorted(present - set(ordered))


#: How the final-generation table says which way a metric should go.
_BETTER_TEXT = {"lower": "lower is better", "higher": "higher is better"}


def better_text(info: MetricInfo) -> str:
    """ "lower is better", "higher is better", "nearer 1 is better", or "" when neither."""
    if info.better == "reference" and info.reference is not None:
        return f"nearer {info.reference:g} is better"
    return _BETTER_TEXT.get(info.better, "")
