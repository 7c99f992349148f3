"""Model families, one small file each, registered by name on import."""

from collapselab.models import gaussian  # noqa: F401  (registers the family)
from collapselab.models.base import (
    FAMILIES,
    Degenerate,
    FamilyParams,
    ModelFamily,
    RunContext,
    build_model,
    get_family,
    register,
)

__all__ = [
    "FAMILIES",
    "Degenerate",
    "FamilyParams",
    "ModelFamily",
    "RunContext",
    "build_model",
    "get_family",
    "register",
]
