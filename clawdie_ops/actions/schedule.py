"""`schedule`: the runbook's cron jobs, each in the crontab of the user it runs as.

One definition serves `schedule show|install|remove` and migrate's schedule handoff
(`pause`/`resume`). Every line written ends in a `# clawdie-ops:JOB` marker and only marked
lines are ever replaced or removed, so a crontab's other lines stay as they were.
Installing twice leaves one set. The crontab is read and replaced through the
`crontab_list` / `crontab_install` templates (`crontab -u USER -l` / `-`).

Jobs (clawdie.schedule.jobs.NAME: when, user, command; FreeBSD defaults):
  backup  weekly, Sunday 02:00, then prune when the backup succeeded
  drill   nightly `drill --latest` of the backup directory
  sanoid  `sanoid --cron` every 15 minutes, as root
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import runner
from ..config.settings import Settings
from ..errors import ConfigError, ScheduleError
from ..runner import Shell

MARK = "# clawdie-ops:"
PAUSED = "#clawdie-paused# "
# Lines written by hand before `schedule install` existed: paused by migrate all the same.
LEGACY = re.compile(r"^[^#].*(sanoid|syncoid|backup)")
_JOB_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]*\$?$", re.I)
_WHEN = re.compile(r"^(@(reboot|yearly|annually|monthly|weekly|daily|midnight|hourly)|"
                   r"(\S+\s+){4}\S+)$")

DEFAULTS: dict[str, Any] = {
    "tool": "/usr/local/bin/clawdie-ops",  # the program cron starts
    "sanoid": "/usr/local/bin/sanoid",
    "user": "clawdie",  # runs backup, prune and drill
    "backup_args": "--skip-skills",  # the runbook's weekly flags
    "log": "",  # append each job's output here; empty: cron mails it
    # cron's own PATH is /usr/bin:/bin (FreeBSD): pg_dump, zstd and sanoid live elsewhere
    "path": "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin",
    "jobs": {
        "backup": {"when": "0 2 * * 0", "user": "{user}",
                   "command": "{tool} backup --root {root} --output {backup_dir} "
                              "{backup_args} && {tool} prune --output {backup_dir}"},
        "drill": {"when": "30 4 * * *", "user": "{user}",
                  "command": "{tool} drill --latest {backup_dir}"},
        "sanoid": {"when": "*/15 * * * *", "user": "root", "command": "{sanoid} --cron"},
    },
}


@dataclass(frozen=True)
class Job:
    name: str
    user: str
    when: str
    command: str

    @property
    def line(self) -> str:
        # cron turns an unescaped % into a newline
        return f"{self.when} {self.command.replace('%', chr(92) + '%')} {MARK}{self.name}"


def settings_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """clawdie.schedule over the defaults, jobs merged one by one (`enabled: false` drops)."""
    raw = dict(cfg.get("schedule") or {})
    out = {**DEFAULTS, **{k: v for k, v in raw.items() if k != "jobs"}}
    jobs = {k: dict(v) for k, v in DEFAULTS["jobs"].items()}
    for name, spec in dict(raw.get("jobs") or {}).items():
        if spec is None or (isinstance(spec, Mapping) and spec.get("enabled") is False):
            jobs.pop(name, None)
            continue
        if not isinstance(spec, Mapping):
            raise ConfigError(f"clawdie.schedule.jobs.{name} must be a mapping (when, user, "
                              "command)", "see the README's 'Operating it'")
        jobs[name] = {**jobs.get(name, {}), **dict(spec)}
    out["jobs"] = jobs
    return out


def jobs(s: Settings, cfg: Mapping[str, Any]) -> list[Job]:
    """The jobs with every field filled (paths shell-quoted); errors name the key."""
    sched = settings_of(cfg)
    fields = {"tool": sched["tool"], "sanoid": sched["sanoid"], "root": s.root,
              "backup_dir": s.backup_dir, "home": s.home}
    quoted = {k: shlex.quote(str(v)) for k, v in fields.items()}
    quoted["backup_args"] = str(sched.get("backup_args") or "")
    out = []
    for name, spec in sched["jobs"].items():
        where = f"clawdie.schedule.jobs.{name}"
        if not _JOB_NAME.match(name):
            raise ConfigError(f"{where}: job names are lower-case letters, digits, - and _", "")
        missing = [k for k in ("when", "user", "command") if not spec.get(k)]
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(missing)}",
                              "each job needs when (5 cron fields), user and command")
        when = " ".join(str(spec["when"]).split())
        if not _WHEN.match(when):
            raise ConfigError(f"{where}.when {spec['when']!r} is not a cron time",
                              "write five fields (m h dom mon dow) or @daily and the like")
        user = str(spec["user"]).format(user=sched["user"])
        if not _USER.match(user):
            raise ConfigError(f"{where}.user {user!r} is not a user name", "")
        try:
            command = str(spec["command"]).format(**quoted)
        except (KeyError, IndexError) as exc:
            raise ConfigError(f"{where}.command uses unknown field {exc}",
                              f"fields: {', '.join(sorted(quoted))}") from None
        if "\n" in command:
            raise ConfigError(f"{where}.command spans lines", "write it on one line")
        if sched.get("log"):
            command += f" >> {shlex.quote(str(sched['log']))} 2>&1"
        if sched.get("path"):
            # an assignment, not a crontab PATH= line: the crontab's other lines keep theirs
            command = f"PATH={shlex.quote(str(sched['path']))}; {command}"
        out.append(Job(name, user, when, command))
    return out


# -- crontab text (pure) ---------------------------------------------------------------
def _marked(line: str) -> str | None:
    """The job name a line of ours carries (paused or not), else None."""
    body = line[len(PAUSED):] if line.startswith(PAUSED) else line
    if MARK in body:
        name = body.rsplit(MARK, 1)[1].strip()
        return name if _JOB_NAME.match(name) else None
    return None


def without_ours(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if _marked(ln) is None]


def installed(text: str, mine: list[Job]) -> str:
    """The crontab with our jobs for this user in place of any earlier ones of ours."""
    lines = without_ours(text)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines + [j.line for j in mine]) + "\n"


def removed(text: str) -> str:
    lines = without_ours(text)
    return "\n".join(lines) + "\n" if lines else ""


def paused(text: str) -> str:
    out = []
    for ln in text.splitlines():
        ours = _marked(ln) is not None and not ln.startswith(PAUSED)
        out.append(PAUSED + ln if ours or (not ln.startswith("#") and LEGACY.match(ln)) else ln)
    return "\n".join(out) + ("\n" if out else "")


def resumed(text: str) -> str:
    lines = [ln[len(PAUSED):] if ln.startswith(PAUSED) else ln for ln in text.splitlines()]
    return "\n".join(lines) + ("\n" if lines else "")


# -- the crontabs (side effects) --------------------------------------------------------
def read(c, s: Settings, user: str) -> str:
    cmd = s.command("crontab_list", user=user)
    res = runner.run(c, Shell(cmd), what=f"reading the crontab of {user}")
    if res.exited == 0:
        return res.stdout
    if "no crontab for" in res.stderr:
        return ""
    if "unknown" in res.stderr or "does not exist" in res.stderr:
        raise ScheduleError(f"cannot read the crontab of {user}: there is no user {user} "
                            "on this host", "create it, or set clawdie.schedule.user (or "
                            "clawdie.schedule.jobs.JOB.user) to the user the jobs run as")
    raise ScheduleError(f"cannot read the crontab of {user}: {res.stderr.strip()[-300:]}",
                        "run it as root to reach another user's crontab, or check "
                        f"clawdie.commands.crontab_list ({cmd})")


def write(c, s: Settings, user: str, text: str) -> None:
    cmd = s.command("crontab_install", user=user)
    res = runner.run(c, Shell(cmd), stdin=text, what=f"writing the crontab of {user}")
    if res.exited != 0:
        raise ScheduleError(f"cannot write the crontab of {user}: {res.stderr.strip()[-300:]}",
                            "run it as root to reach another user's crontab, or check "
                            f"clawdie.commands.crontab_install ({cmd}); nothing was changed")


def users(all_jobs: list[Job]) -> list[str]:
    return list(dict.fromkeys(j.user for j in all_jobs))


def plan(c, s: Settings, cfg: Mapping[str, Any], action: str) -> list[dict[str, Any]]:
    """Per user: the crontab now, and what `action` (install/remove/pause/resume) makes of it."""
    all_jobs = jobs(s, cfg)
    out = []
    for user in users(all_jobs):
        now = read(c, s, user)
        mine = [j for j in all_jobs if j.user == user]
        after = {"install": installed(now, mine), "remove": removed(now), "pause": paused(now),
                 "resume": resumed(now), "show": now}[action]
        out.append({"user": user, "jobs": [j.name for j in mine],
                    "lines": [j.line for j in mine], "before": now, "after": after,
                    "changes": now != after,
                    "installed": [_marked(ln) for ln in now.splitlines()
                                  if _marked(ln) and not ln.startswith(PAUSED)],
                    "paused": [_marked(ln) for ln in now.splitlines()
                               if ln.startswith(PAUSED) and _marked(ln)]})
    return out


def apply(c, s: Settings, cfg: Mapping[str, Any], action: str, dry_run: bool = False
          ) -> dict[str, Any]:
    steps = plan(c, s, cfg, action)
    if not dry_run:
        for st in steps:
            if st["changes"]:
                write(c, s, st["user"], st["after"])
    return {"action": action, "dry_run": dry_run,
            "crontabs": [{k: v for k, v in st.items() if k not in ("before", "after")}
                         | {"diff": _diff(st["before"], st["after"])} for st in steps]}


def _diff(before: str, after: str) -> list[str]:
    import difflib
    return [ln for ln in difflib.unified_diff(before.splitlines(), after.splitlines(),
                                              lineterm="", n=0)
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
