"""A migration that stops: where a re-run's downtime window starts, undoing the window, and
the failure an operator reads (with the report of where it stopped)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ClawdieError, MigrationFailed, Terminated
from . import outcome, pgmove
from . import delta
from .plan import DOWNTIME, Step

if TYPE_CHECKING:
    from .run import Migration


def enter_window(m: Migration) -> None:
    """Decide where the downtime window starts: from the top, or where it was cut."""
    w = m.journal.window
    done = [s for s in DOWNTIME if m.journal.done(s)]
    if not done:
        return
    if w.get("state") == "open" and m.journal.done("stop-old-agent"):
        status = m.step_tool("old", "agent-status")
        if not status.get("running"):
            m.journal.note("resumed the downtime window", steps_done=done)
            m.out.warn("continuing the downtime window of an earlier run (the agent "
                       "on the old host is still stopped)")
            return
        m.out.warn("the agent runs again on the old host since the earlier run: the "
                   "downtime window starts over")
    m.journal.forget(list(DOWNTIME))
    m.journal.window.clear()
    m.journal.save()


def roll_back(m: Migration, failed: Step, exc: BaseException) -> None:
    """A failure in the downtime window: the new host's agent stopped (if it started), the
    old host's started again; then raise the failure naming what was undone."""
    undone: list[str] = []
    problems: list[str] = []
    if m.journal.done("start-new-agent") or failed.id in ("start-new-agent", "doctor"):
        try:
            m.step_tool("new", "agent-stop")
            undone.append("stopped the agent on the new host")
        except ClawdieError as err:
            problems.append(f"could not stop the agent on the new host: {err.message}")
    if m.journal.done("install-files") or failed.id == "install-files":
        try:
            delta.undo_on_new(m)
            undone.append("put back the new host's own messages.db and files")
        except ClawdieError as err:
            problems.append(f"could not put back the new host's own files: {err.message}; "
                            "run there: clawdie-ops migrate-delta undo")
    pgmove.undo(m, failed, undone, problems)  # the old db jail first: the agent needs it
    ran = m.journal.window.get("agent_was_running", m.journal.data.get("old_agent_ran", True))
    if ran:
        try:
            started = m.step_tool("old", "agent-start").get("started")
            undone.append("started the agent on the old host again" if started else
                          "the agent on the old host was still running")
        except ClawdieError as err:
            problems.append(f"COULD NOT start the agent on the old host: {err.message}; "
                            f"start it by hand there: clawdie-ops migrate-step agent-start")
    m.journal.window["state"] = "rolled_back"
    m.journal.save()
    raise failure(m, failed, exc, undone, problems)


def failure(m: Migration, failed: Step, exc: BaseException, undone: list[str] | None = None,
            problems: list[str] | None = None) -> MigrationFailed:
    """The MigrationFailed for a stop at `failed`: what happened, what state the old host is
    in, the report (attached as .report), and the journal updated."""
    if isinstance(exc, ClawdieError):
        why = exc.message
    elif isinstance(exc, (KeyboardInterrupt, Terminated)):
        why = "interrupted"
    else:
        why = f"{type(exc).__name__}: {exc}"
    hint = exc.hint if isinstance(exc, ClawdieError) else ""
    m.journal.data.update(status="failed", failed_step=failed.id, error=why)
    m.journal.note("failed", step=failed.id, error=why)
    report = outcome.report(m, "failed", failed=failed, error=why, undone=undone or [],
                            problems=problems or [])
    if failed.phase == "downtime":
        old_state = "; ".join(problems) if problems else \
            "the old host's agent runs again and nothing there was changed"
    elif failed.id == "tools":
        old_state = "nothing else was changed on either host"
    elif failed.phase == "preflight":
        old_state = "nothing was changed on either host"
    else:
        old_state = "the agent kept running on the old host and nothing there was changed"
    err = MigrationFailed(
        f"migration stopped at '{failed.id}' on {m.plan.label(failed.where)}: {why}; "
        f"{old_state}",
        (hint + "; " if hint else "") + "then run the same command again: it continues "
        "where it stopped")
    err.report = report  # type: ignore[attr-defined]
    return err
