"""Sessions: `nox -s tests` (all, on the rig), unit, lint (ruff, mypy), drill, bench, faults."""
import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """All tests: unit and integration on real PostgreSQL, zfs-fuse, sanoid/syncoid, sshd.

    In the environment nox runs from (`.venv`, which `scripts/setup` fills with the tool
    and its test dependencies): a second virtualenv cost a fresh clone half a minute.
    Three workers, a test file each at a time (pytest-xdist): every worker's rig has its
    own addresses and pools; four were slower on 2 cores (the rig is CPU-bound)."""
    import sys

    session.run(sys.executable, "-m", "pytest", "-n", "3", "--dist", "loadfile",
                *session.posargs, external=True)


@nox.session
def unit(session: nox.Session) -> None:
    """Fast tests of plans and command construction (no services)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on everything, and mypy on the package (settings in pyproject.toml)."""
    session.install("-e", ".[test]")
    session.run("ruff", "check", "clawdie_ops", "tests", "faults", "tasks.py", "noxfile.py")
    session.run("mypy")


@nox.session
def zfs(session: nox.Session) -> None:
    """Snapshots, rollback, sanoid retention and syncoid replication on the rig's real ZFS."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit/test_zfs_commands.py",
                "tests/integration/test_zfs_snapshots.py",
                "tests/integration/test_zfs_replicate.py", *session.posargs)


@nox.session
def migrate(session: nox.Session) -> None:
    """Hardware migration on the two-host rig: end to end, from a third machine, and faults."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit/test_migrate_plan.py", "tests/unit/test_migrate_parts.py",
                "tests/integration/test_migrate.py", "tests/integration/test_migrate_faults.py",
                *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """clawdie-ops against the runbook's way on the rig: `nox -s bench -- --scale 1.0 --runs 3`.

    Prints the table, writes every run to bench-results/latest.json and the table to
    BENCHMARKS.md. Never part of `tests`: timings are measured, not asserted."""
    session.install("-e", ".[bench,test]")  # the rig's helpers come from tests/
    session.run("python", "-m", "bench.run", "--json", "bench-results/latest.json",
                "--markdown", "BENCHMARKS.md", *session.posargs)


@nox.session
def drill(session: nox.Session) -> None:
    """Restore drill of the newest archive in a backup directory (JUnit: drill-report.xml).

    `nox -s drill -- /mnt/backup [drill flags]` (or CLAWDIE_BACKUP_DIR=/mnt/backup): a scratch
    sandbox and a throwaway PostgreSQL, never the live installation. Without a directory it
    runs the drill's own tests on the rig instead (good and bad archives, nothing left behind).
    """
    import os

    session.install("-e", ".[test]")
    args = list(session.posargs)
    backup_dir = args.pop(0) if args and not args[0].startswith("-") else \
        os.environ.get("CLAWDIE_BACKUP_DIR", "")
    if not backup_dir:
        session.run("pytest", "tests/integration/test_drill.py", *args)
        return
    report = os.environ.get("DRILL_REPORT", "drill-report.xml")
    session.run("clawdie-ops", "drill", "--latest", backup_dir, "--junit", report, *args)


@nox.session
def faults(session: nox.Session) -> None:
    """The fault-injection campaign on the rig: `nox -s faults -- [--count 200] [--seed S]
    [--case restore-17] [--commands backup,restore] [--workers 3]`.

    Writes reliability-results/latest.json and RELIABILITY.md (not for --case). Never part
    of `tests`, apart from its ten-fault sample (tests/integration/test_faults_sample.py)."""
    session.install("-e", ".[test]")  # the rig's helpers come from tests/
    args = list(session.posargs)
    if not any(a == "--case" or a.startswith("--case=") for a in args):
        args = ["--json", "reliability-results/latest.json", "--markdown", "RELIABILITY.md",
                *args]
    session.run("python", "-m", "faults", *args)
