"""Prefect flows of CollapseLab: the study flow, the report flow, and the `collapselab` CLI.

Importing this package first points Prefect, matplotlib and scikit-learn at the project's state
directory (not the home directory) and pins BLAS to one thread per process: worker processes
inherit both through the environment.
"""

from flows.environment import configure_environment

configure_environment()
