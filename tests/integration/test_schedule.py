"""schedule and migrate's schedule handoff against the real crontab(1) (Debian's cron), in the
crontab of a user made for the test: never root's, which the machine's other users share."""
from __future__ import annotations

import json
import pwd
import subprocess

import pytest

from clawdie_ops.config.settings import DEFAULT_COMMANDS
from tests.conftest import cli
from tests.helpers import set_config

USER = "clawdiecrontest"
FOREIGN = ("MAILTO=ops@example.org\n"
           "5 5 * * * echo mine  # the operator's own line\n"
           "0 3 * * 0 /usr/sbin/syncoid tank/data backup@nas:tank/data\n")


@pytest.fixture(scope="module")
def cron_user():
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True)
    yield USER
    subprocess.run(["crontab", "-u", USER, "-r"], capture_output=True)
    subprocess.run(["userdel", USER], capture_output=True)


def crontab() -> str:
    res = subprocess.run(["crontab", "-u", USER, "-l"], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else ""


def set_crontab(text: str) -> None:
    subprocess.run(["crontab", "-u", USER, "-"], input=text, text=True, check=True)


@pytest.fixture
def scheduled(host, cron_user):
    """The host's jobs, all in the test user's real crontab (sanoid too, not root's)."""
    commands = dict(host.clawdie_config()["commands"])
    commands.update(crontab_list=DEFAULT_COMMANDS["crontab_list"],
                    crontab_install=DEFAULT_COMMANDS["crontab_install"])
    sched = dict(host.clawdie_config()["schedule"])
    sched.update(user=cron_user, jobs={"sanoid": {"user": cron_user}})
    set_config(host, commands=commands, schedule=sched)
    set_crontab(FOREIGN)
    yield host
    subprocess.run(["crontab", "-u", USER, "-r"], capture_output=True)


def ours(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "# clawdie-ops:" in ln]


def test_install_twice_leaves_one_set_and_remove_keeps_foreign_lines(scheduled):
    h = scheduled
    res = cli(h, "schedule", "install", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert crontab() == FOREIGN, "a dry run writes nothing"
    assert "+0 2 * * 0 " in res.stdout

    for _ in range(2):
        res = cli(h, "schedule", "install", "--json")
        assert res.returncode == 0, res.stderr
    tab = crontab()
    assert tab.startswith(FOREIGN), "the operator's lines stay first and unchanged"
    lines = ours(tab)
    assert [ln.rsplit(":", 1)[1] for ln in lines] == ["backup", "drill", "sanoid"]
    backup_line = lines[0]
    assert backup_line.startswith("0 2 * * 0 ")
    assert f"backup --root {h.root} --output {h.home / 'backups'} --skip-skills && " in \
        backup_line and f"prune --output {h.home / 'backups'}" in backup_line
    assert lines[1].startswith("30 4 * * * ") and "drill --latest" in lines[1]
    for line in lines:  # what cron hands to /bin/sh parses, marker comment included
        command = line.split(None, 5)[5]
        assert subprocess.run(["sh", "-n", "-c", command]).returncode == 0, line
    assert lines[2].startswith("*/15 * * * * PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/")
    assert lines[2].split()[6].endswith("sanoid") and lines[2].split()[7] == "--cron"
    again = json.loads(res.stdout)
    assert again["crontabs"][0]["diff"] == [], "the second install changed nothing"

    show = cli(h, "schedule", "show")
    assert show.returncode == 0 and show.stdout.count("[installed]") == 3

    set_config(h, schedule={**json.loads((h.home / ".invoke.json").read_text())["clawdie"]
                            ["schedule"], "backup_args": "--compression gzip"})
    assert cli(h, "schedule", "install").returncode == 0
    lines = ours(crontab())
    assert len(lines) == 3 and "--compression gzip" in lines[0], "install updates in place"

    res = cli(h, "schedule", "remove")
    assert res.returncode == 0, res.stderr
    assert crontab() == FOREIGN


def test_migrate_pause_and_resume_use_the_same_lines(scheduled):
    h = scheduled
    assert cli(h, "schedule", "install").returncode == 0
    installed = crontab()
    res = cli(h, "migrate-step", "schedule-pause", "--json")
    assert res.returncode == 0, res.stderr
    paused = crontab().splitlines()
    assert all(ln.startswith("#clawdie-paused# ") for ln in ours("\n".join(paused)))
    assert "#clawdie-paused# 0 3 * * 0 /usr/sbin/syncoid tank/data backup@nas:tank/data" \
        in paused, "hand-written syncoid lines are paused too"
    assert "5 5 * * * echo mine  # the operator's own line" in paused
    assert cli(h, "migrate-step", "schedule-pause").returncode == 0
    assert crontab().count("#clawdie-paused# #clawdie-paused#") == 0, "pausing twice is safe"
    show = cli(h, "schedule", "show")
    assert show.stdout.count("[paused]") == 3
    res = cli(h, "migrate-step", "schedule-resume", "--json")
    assert res.returncode == 0, res.stderr
    assert crontab() == installed


def test_schedule_errors_name_the_user_and_the_setting(scheduled):
    h = scheduled
    cfg = json.loads((h.home / ".invoke.json").read_text())["clawdie"]["schedule"]
    set_config(h, schedule={**cfg, "user": "nosuchuser"})
    res = cli(h, "schedule", "install")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "no user nosuchuser" in res.stderr and "clawdie.schedule.user" in res.stderr
    set_config(h, schedule={**cfg, "jobs": {"drill": {"when": "every night"}}})
    res = cli(h, "schedule", "show")
    assert res.returncode == 1 and "clawdie.schedule.jobs.drill.when" in res.stderr
    assert crontab() == FOREIGN
    res = cli(h, "schedule", "start")
    assert res.returncode == 1 and "show, install, remove" in res.stderr
