"""invoke hands `TASK --help` to a task as its positional argument: show the real help then."""
from __future__ import annotations


def help_requested(task_name: str, value: object) -> bool:
    """True when `value` is -h/--help; prints the task's invoke help (as `--help TASK`)."""
    if value not in ("-h", "--help"):
        return False
    from ..cli import program  # the CLI imports the tasks: import it only when asked

    program.run(["clawdie-ops", "--help", task_name], exit=False)
    return True
