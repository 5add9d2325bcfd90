"""The runbook's way, as the shell scripts an operator would type (the baseline of each pair).

Backup: snapshot, sequential `pg_dump --clean` to files, `cp` of messages.db and the config,
one `tar -czf`. Restore: `tar -xzf`, `cp` back, `psql < dump` for each database.
Passwords reach pg_dump/psql the way clawdie-ops passes them (a 0600 PGPASSFILE), so the
two sides differ only in how they work, not in how they authenticate.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from tests.rig import content
from tests.rig.hosts import linux_commands


def passfile(h, path: Path) -> Path:
    lines = []
    for key, pw in (("memory", content.MEMORY_PASSWORD), ("skills", content.SKILLS_PASSWORD)):
        esc = pw.replace("\\", "\\\\").replace(":", "\\:")
        lines.append(f"{h.address}:5432:{key}_db:{key}_user:{esc}\n")
    path.write_text("".join(lines))
    path.chmod(0o600)
    return path


def _tools(h) -> str:
    """The host's own PostgreSQL client first on PATH (as on a host with its db jail's
    postgresqlNN-client): Debian's PATH has only 15's, which cannot dump an 18 server."""
    return f"export PATH={shlex.quote(str(h.cluster.bindir))}:$PATH"


def allowlist(h) -> Path:
    return h.home / ".config" / "clawdie-cp" / "mount-allowlist.json"


def backup_script(h, out_dir: Path, name: str, pgpass: Path, snapshot: bool = True) -> str:
    q = shlex.quote
    work = out_dir / f".runbook-{name}"
    top = work / name
    lines = ["set -euo pipefail", f"export PGPASSFILE={q(str(pgpass))}", _tools(h),
             f"mkdir -p {q(str(top))}"]
    if snapshot:
        lines.append(f"zfs snapshot -r {q(h.pool.name + '/clawdie/jails@' + name)}")
    for key in ("memory", "skills"):
        lines.append(f"{q(str(h.cluster.bindir / 'pg_dump'))} --clean -h {h.address} "
                     f"-U {key}_user {key}_db "
                     f"> {q(str(top / f'{key}_db.sql'))}")
    lines += [
        f"cp {q(str(h.root / 'store' / 'messages.db'))} {q(str(top / 'messages.db'))}",
        f"cp {q(str(h.root / '.env'))} {q(str(top / 'env'))}",
        f"cp -r {q(str(h.root / 'groups'))} {q(str(top / 'groups'))}",
        f"cp {q(str(allowlist(h)))} {q(str(top / 'mount-allowlist.json'))}",
        f"printf '{{\"agent_name\": \"%s\", \"timestamp\": \"%s\"}}\\n' clawdie \"$(date -Is)\""
        f" > {q(str(top / 'manifest.json'))}",
        f"du -sb {q(str(top))}",  # what the archive holds, uncompressed (for the report)
        f"tar -czf {q(str(out_dir / (name + '.tar.gz')))} -C {q(str(work))} {q(name)}",
        f"rm -rf {q(str(work))}",
    ]
    return "\n".join(lines) + "\n"


def restore_script(h, archive: Path, name: str, pgpass: Path, work: Path) -> str:
    """Steps 2-6 of the runbook: extract, .env, stop the agent, messages.db, psql < dump,
    groups, allowlist, start the agent (with the host's own stop/start commands)."""
    q = shlex.quote
    top = work / name
    cmds = linux_commands()
    pidfile = q(str(h.root / "store" / "clawdie.pid"))
    fill = {"root": q(str(h.root)), "pidfile": pidfile}
    return "\n".join([
        "set -euo pipefail", f"export PGPASSFILE={q(str(pgpass))}", _tools(h),
        f"mkdir -p {q(str(work))}", f"tar -xzf {q(str(archive))} -C {q(str(work))}",
        f"cp {q(str(top / 'env'))} {q(str(h.root / '.env'))}",
        f"if test -f {pidfile} && kill -0 \"$(cat {pidfile})\" 2>/dev/null; then "
        f"{cmds['agent_stop'].format(**fill)}; fi",
        f"cp {q(str(top / 'messages.db'))} {q(str(h.root / 'store' / 'messages.db'))}",
        *[f"{q(str(h.cluster.bindir / 'psql'))} -q -h {h.address} -U {key}_user {key}_db "
          f"< {q(str(top / f'{key}_db.sql'))}"
          " > /dev/null" for key in ("memory", "skills")],
        f"cp -r {q(str(top / 'groups'))}/. {q(str(h.root / 'groups'))}/",
        f"cp {q(str(top / 'mount-allowlist.json'))} {q(str(allowlist(h)))}",
        f"( {cmds['agent_start'].format(**fill)} )",
        f"rm -rf {q(str(work))}",
    ]) + "\n"
