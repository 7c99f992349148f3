"""Prefect flows of CollapseLab: the study flow, the report flow, and the `collapselab` CLI.

Importing this package first points Prefect, matplotlib and scikit-learn at the project's state
directory (not the home directory), turns Prefect's anonymous usage reports off, and pins BLAS to
one thread per process: worker processes inherit all of it through the environment
(flows.environment). The Prefect server's lifecycle is flows.server.
"""

from flows.environment import configure_environment

configure_environment()
