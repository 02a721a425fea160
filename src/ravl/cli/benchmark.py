"""``ravl benchmark discover|mitigate``: the settings grids that measure discovery and mitigation methods.

Each grid is one subcommand of ``ravl benchmark``, added by its module's ``add_parser(sub)``
(:mod:`ravl.cli.benchmark_discover`, :mod:`ravl.cli.benchmark_mitigate`), which sets
``_benchmark_run`` to the function running it; :func:`run` dispatches.
"""

from __future__ import annotations

import ravl.cli.benchmark_discover as benchmark_discover
import ravl.cli.benchmark_mitigate as benchmark_mitigate


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    benchmark_discover.add_parser(sub)
    benchmark_mitigate.add_parser(sub)


def run(args) -> int:
    return int(args._benchmark_run(args) or 0)
