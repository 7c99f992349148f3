"""CollapseLab: comparative studies of model collapse.

The science lives here as plain Python (no orchestration): study configuration, model families,
data strategies, real-data sources, metrics, closed forms, storage and reporting.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("collapselab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
