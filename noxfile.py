"""Sessions: `nox -s tests` (everything, on the rig), unit, lint, drill, bench."""
import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """All tests: unit and integration on real PostgreSQL, zfs-fuse, sanoid/syncoid, sshd."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def unit(session: nox.Session) -> None:
    """Fast tests of plans and command construction (no services)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "clawdie_ops", "tests", "tasks.py", "noxfile.py")


@nox.session
def zfs(session: nox.Session) -> None:
    """Snapshots, rollback, sanoid retention and syncoid replication on the rig's real ZFS."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit/test_zfs_commands.py",
                "tests/integration/test_zfs_snapshots.py",
                "tests/integration/test_zfs_replicate.py", *session.posargs)
