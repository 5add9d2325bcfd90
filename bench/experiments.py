"""Side experiments behind the defaults (`--pairs codecs,formats`): not races against the runbook.

floor: the least a restore of clawdie-ops's archive can take on this machine.
codecs: the same uncompressed backup tar through gzip -6 (what `tar -czf` uses), pigz and
zstd at several levels; time, memory and size. formats: memory_db dumped plain (psql
replays it) and in pg_dump's custom format (pg_restore -j replays it in parallel).
"""
from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from .measure import measure


def codecs(b, work: Path, progress) -> dict:
    """Every codec on the same bytes: the runbook archive, decompressed once."""
    src = b.latest["runbook"]
    raw = work / "codec-input.tar"
    measure("gunzip", f"gzip -dc {shlex.quote(str(src))} > {shlex.quote(str(raw))}")
    cores = os.cpu_count() or 1
    rows = {}
    for name, cmd in (("gzip -6", "gzip -6 -c"), (f"pigz -6 -p{cores}", f"pigz -6 -p{cores} -c"),
                      (f"zstd -1 -T{cores}", f"zstd -q -1 -T{cores} -c"),
                      (f"zstd -2 -T{cores}", f"zstd -q -2 -T{cores} -c"),
                      (f"zstd -3 -T{cores}", f"zstd -q -3 -T{cores} -c"),
                      (f"zstd -6 -T{cores}", f"zstd -q -6 -T{cores} -c")):
        out = work / "codec-output"
        run = measure(name, f"{cmd} < {shlex.quote(str(raw))} > {shlex.quote(str(out))}")
        rows[name] = {"wall_s": run.wall_s, "cpu_s": run.cpu_s, "pss": run.tree_pss,
                      "size": out.stat().st_size}
        progress(f"  {name:<14} {run.wall_s:6.2f} s  {out.stat().st_size / 2**20:8.1f} MiB  "
                 f"PSS {run.tree_pss / 2**20:.0f} MiB")
        out.unlink()
    rows["input"] = {"size": raw.stat().st_size}
    raw.unlink()
    return rows


def formats(b, work: Path, progress) -> dict:
    """memory_db: plain + psql (single transaction) against custom + pg_restore -j."""
    h, env = b.h, {**os.environ, "PGPASSFILE": str(b.pgpass)}
    conn = f"-h {h.address} -U memory_user"
    plain, custom = work / "memory_db.sql", work / "memory_db.dump"
    cores = os.cpu_count() or 1
    steps = {
        "dump plain": f"pg_dump --clean --if-exists {conn} -f {plain} memory_db",
        "dump custom -Z0": f"pg_dump -Fc -Z0 --clean --if-exists {conn} -f {custom} memory_db",
        "restore plain (psql -1)": f"psql -X -q -v ON_ERROR_STOP=1 --single-transaction {conn} "
                                   f"-d memory_db -f {plain} > /dev/null",
        f"restore custom (pg_restore -j{cores})": f"pg_restore -j{cores} --clean --if-exists "
                                                  f"{conn} -d memory_db {custom}",
        "restore custom (pg_restore -j1)": f"pg_restore --clean --if-exists {conn} -d memory_db "
                                           f"{custom}",
    }
    rows = {}
    for name, cmd in steps.items():
        run = measure(name, cmd, env=env)
        if run.exit:
            raise RuntimeError(f"{name}: {run.output[-2000:]}")
        rows[name] = {"wall_s": run.wall_s, "cpu_s": run.cpu_s}
        progress(f"  {name:<32} {run.wall_s:6.2f} s")
    rows["sizes"] = {"plain": plain.stat().st_size, "custom": custom.stat().st_size}
    plain.unlink()
    custom.unlink()
    return rows


def floor(b, work: Path, progress) -> dict:
    """The least any restore of this archive can take here: unpack it, then replay both
    dumps at once (no verification, no pre-restore copies, no checks). What is left of a
    restore's time beyond this is what its safety costs."""
    archive = b.latest["clawdie-ops"]
    h, env = b.h, {**os.environ, "PGPASSFILE": str(b.pgpass)}
    dest = work / "floor"
    dest.mkdir(exist_ok=True)
    unpack = measure("unpack", f"zstd -q -dc {shlex.quote(str(archive))} | "
                               f"tar -x -C {shlex.quote(str(dest))}")
    top = next(dest.iterdir())
    replay = " & ".join(
        f"psql -X -q -v ON_ERROR_STOP=1 --single-transaction -h {h.address} -U {k}_user "
        f"-d {k}_db -f {shlex.quote(str(top / f'{k}_db.sql'))} > /dev/null"
        for k in ("memory", "skills")) + "; wait"
    both = measure("replay", replay, env=env)
    if unpack.exit or both.exit:
        raise RuntimeError(f"floor: {unpack.output[-500:]} {both.output[-1000:]}")
    out = {"unpack_s": unpack.wall_s, "replay_both_s": both.wall_s,
           "total_s": round(unpack.wall_s + both.wall_s, 3)}
    progress(f"  unpack {unpack.wall_s:.1f} s, both dumps replayed at once {both.wall_s:.1f} s")
    shutil.rmtree(dest, ignore_errors=True)
    return out


def encryption(b, work: Path, progress, runs: int = 3) -> dict:
    """What encryption at rest costs: backup and restore of the same installation, plain
    and through age, interleaved in the same run (the ratio is encrypted / plain)."""
    import json
    import subprocess

    from .pairs import CLI, check, interleave, pair

    ident = work / "age-identity.txt"
    ident.unlink(missing_ok=True)
    subprocess.run(["age-keygen", "-o", str(ident)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(ident)], check=True,
                               capture_output=True, text=True).stdout.strip()
    cfg = work / "encryption.json"
    cfg.write_text(json.dumps({"clawdie": {"encryption": {"recipients": [recipient],
                                                          "identity": str(ident)}}}))
    h = b.h
    out = h.home / "bench-out-age"
    out.mkdir(exist_ok=True)
    latest: dict[str, Path] = {}
    sizes: dict[str, list[int]] = {"plain": [], "age": []}

    def backup(side: str, flags: list[str]):
        def run(i: int):
            r = check(measure(f"backup {side}", [CLI, *flags, "backup", "--json", "--output",
                                                 str(out)], env=h.proc_env(), cwd=h.root))
            archive = Path(json.loads(r.output[r.output.index("{"):])["archive"])
            if latest.get(side) and latest[side] != archive:
                latest[side].unlink(missing_ok=True)
            latest[side] = archive
            sizes[side].append(archive.stat().st_size)
            return r
        return run

    def restore(side: str, flags: list[str]):
        def run(i: int):
            return measure(f"restore {side}", [CLI, *flags, "restore", str(latest[side]),
                                               "--yes", "--json"], env=h.proc_env(),
                           cwd=h.root)
        return run

    progress("  backup: plain vs age")
    got = interleave(runs, {"plain": backup("plain", []), "age": backup("age", ["-f", str(cfg)])},
                     progress)
    res = {"backup": pair("encryption-backup", "clawdie-ops backup", "clawdie-ops backup, "
                          "age-encrypted", got["plain"], got["age"],
                          sizes={k: max(v) for k, v in sizes.items()})}
    progress("  restore: plain vs age")
    got = interleave(runs, {"plain": restore("plain", []),
                            "age": restore("age", ["-f", str(cfg)])}, progress)
    res["restore"] = pair("encryption-restore", "clawdie-ops restore", "clawdie-ops restore of "
                          "the age-encrypted archive", got["plain"], got["age"])
    for r in res.values():  # encrypted / plain: above 1 is the cost
        r["cost"] = round(r["b"]["median"]["wall_s"] / r["a"]["median"]["wall_s"], 3)
    shutil.rmtree(out, ignore_errors=True)
    return res
