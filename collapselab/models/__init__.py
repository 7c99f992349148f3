"""Model families, one small file each, registered by name when this package is imported.

Every module in this folder except `base` is a family: importing them all here is what makes a
new file appear in study files, the CLI and the conformance suite without touching anything else.
Families from outside the package (installed plug-ins, `module:ClassName`) are found by
`load_family` when a study first names them.
"""

import importlib
import pkgutil

from collapselab.models.base import (
    ENTRY_POINT_GROUP,
    FAMILIES,
    PLUGINS,
    Degenerate,
    FamilyParams,
    ModelFamily,
    PluginOrigin,
    RunContext,
    build_model,
    get_family,
    load_family,
    load_study_families,
    register,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base" and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "PLUGINS",
    "Degenerate",
    "FamilyParams",
    "ModelFamily",
    "PluginOrigin",
    "RunContext",
    "build_model",
    "get_family",
    "load_family",
    "load_study_families",
    "register",
]
