"""Model families, one small file each, registered by name when this package is imported.

Every module in this folder except `base` is a family: importing them all here is what makes a
new file appear in study files, the CLI and the conformance suite without touching anything else.
"""

import importlib
import pkgutil

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

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base" and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

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
