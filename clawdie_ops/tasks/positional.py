"""Positional arguments with invoke: `TASK --help` and a positional that a flag can replace."""
from __future__ import annotations

from typing import Any

from invoke import Collection, Program, Task
from invoke.parser import Argument

from .. import __version__


def help_requested(task_name: str, value: object) -> bool:
    """True when `value` is -h/--help; prints the task's invoke help (as `--help TASK`).

    invoke hands `TASK --help` to a task as its positional argument."""
    if value not in ("-h", "--help"):
        return False
    assert _namespace is not None, "tasks/__init__.py registers the collection"
    Program(namespace=_namespace, version=__version__, name="clawdie-ops",
            binary="clawdie-ops").run(["clawdie-ops", "--help", task_name], exit=False)
    return True


_namespace: Collection | None = None


def register(namespace: Collection) -> None:
    """The collection whose help `help_requested` prints (set once it is built)."""
    global _namespace
    _namespace = namespace


class _UnlessFlag(Argument):
    """A positional that counts as given (empty) once `self.instead` has a value."""

    instead: Argument

    @property
    def value(self) -> Any:
        value = Argument.value.fget(self)  # type: ignore[attr-defined]
        return "" if value is None and self.instead.value else value

    @value.setter
    def value(self, arg: str) -> None:
        self.set_value(arg, cast=True)


def positional_unless(positional: str, flag: str) -> type[Task]:
    """A Task class for `task [POSITIONAL | --flag VALUE]` (invoke has no optional positional:
    its parser asks every positional for a value and fails when one has none)."""

    class PositionalUnless(Task):
        def get_arguments(self, *a: Any, **kw: Any) -> list[Argument]:
            args = super().get_arguments(*a, **kw)
            by_name = {x.name: x for x in args}
            pos = by_name[positional]
            pos.__class__ = _UnlessFlag  # same state, one property more
            pos.instead = by_name[flag]  # type: ignore[attr-defined]
            return args

    return PositionalUnless
