"""The `clawdie-ops` console script: the same task collection as `inv` in a checkout.

`program` is built on first use: `clawdie-ops --version` (which migrate runs on each
host to find the tool) answers without importing invoke and the task collection.
"""
from __future__ import annotations

import sys
from typing import Any

from . import __version__

NAME = "clawdie-ops"
VERSION_FLAGS = (["--version"], ["-V"])


def _build() -> Any:
    from invoke import Program

    from .tasks import namespace

    return Program(namespace=namespace, version=__version__, name=NAME, binary=NAME)


class _Program:
    """invoke's Program, imported only when something other than --version is asked."""

    _real: Any = None

    def run(self, argv: list[str] | str | None = None, exit: bool = True) -> None:
        given = sys.argv if argv is None else (argv.split() if isinstance(argv, str) else argv)
        args = list(given)[1:]  # argv[0] is the program's name, as invoke reads it
        if args in VERSION_FLAGS:
            print(f"{NAME} {__version__}")  # invoke's own print_version line
            return
        self._program().run(argv, exit)

    def _program(self) -> Any:
        if _Program._real is None:
            _Program._real = _build()
        return _Program._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._program(), name)


program = _Program()
