"""Positional arguments with invoke: `TASK --help` and a positional that a flag can replace."""
from __future__ import annotations

from typing import Any

from invoke import Task
from invoke.parser import Argument


def help_requested(task_name: str, value: object) -> bool:
    """True when `value` is -h/--help; prints the task's invoke help (as `--help TASK`).

    invoke hands `TASK --help` to a task as its positional argument."""
    if value not in ("-h", "--help"):
        return False
    from ..cli import program  # the CLI imports the tasks: import it only when asked

    task = program.namespace.tasks.get(task_name) if program.namespace else None
    if task is not None and getattr(task, "flag_help", None):
        task.help = dict(task.flag_help)
    program.run(["clawdie-ops", "--help", task_name], exit=False)
    return True


class _UnlessFlag(Argument):
    """A positional that counts as given (empty) once `self.instead` has a value."""

    instead: Argument

    @property  # type: ignore[override]
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
