"""The command line (``python -m adafilter_lib`` / ``adafilter``): ``app`` builds the parser and runs a command
(``main``); ``args`` holds the run options, ``analysis``, ``bench``, ``paper``, ``pruning`` and ``tune`` their commands.

May import: everything (commands import their modules when they run, so that ``--help`` stays fast).
"""

from .app import main

__all__ = ["main"]
