"""Installing clawdie-ops on a migration host: the wheel, the probes, the errors."""
from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile

import pytest
from invoke import MockContext, Result

from clawdie_ops import __version__
from clawdie_ops.config import inventory
from clawdie_ops.hosts import install as toolinstall, wheel
from clawdie_ops.errors import ConfigError, HostError
from clawdie_ops.config.inventory import Host

NEW = Host(name="newbox", ssh="newbox", install={"python": "python3.11"})


def test_the_wheel_holds_every_module_with_a_matching_record(tmp_path):
    whl = wheel.build(tmp_path)
    assert whl.name == f"clawdie_ops-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(whl) as zf:
        names = set(zf.namelist())
        info = f"clawdie_ops-{__version__}.dist-info"
        assert {"clawdie_ops/__init__.py", "clawdie_ops/cli.py", "clawdie_ops/tasks/migrate.py",
                f"{info}/METADATA", f"{info}/WHEEL", f"{info}/RECORD",
                f"{info}/entry_points.txt"} <= names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        meta = zf.read(f"{info}/METADATA").decode()
        assert "Name: clawdie-ops" in meta and f"Version: {__version__}" in meta
        assert "Requires-Dist: fabric" in meta
        assert "clawdie-ops = clawdie_ops.cli:program.run" in \
            zf.read(f"{info}/entry_points.txt").decode()
        record = zf.read(f"{info}/RECORD").decode().splitlines()
        assert len(record) == len(names)
        for line in record:
            name, digest, size = line.rsplit(",", 2)
            if name.endswith("RECORD"):
                continue
            data = zf.read(name)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={want}" and int(size) == len(data), name


def test_the_wheel_runs_as_clawdie_ops(tmp_path):
    """Imported from the wheel alone, in another interpreter, it is a working clawdie-ops."""
    whl = wheel.build(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import clawdie_ops.cli as c; "
            "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
            "sys.argv = ['clawdie-ops', '--version']; c.program.run()")
    res = subprocess.run([sys.executable, "-c", code, str(whl)], capture_output=True,
                         text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"clawdie-ops {__version__}"


def test_find_prefers_the_configured_tool_then_an_earlier_install():
    c = MockContext(run=Result(stdout=f"clawdie-ops {__version__}\n", exited=0))
    found = toolinstall.find(c, NEW, __version__)
    assert (found.path, found.how) == ("clawdie-ops", "present")
    # not on PATH, but installed by an earlier migrate run
    c = MockContext(run=[Result(stderr="sh: clawdie-ops: not found", exited=127),
                         Result(stdout=f"clawdie-ops {__version__}\n/home/c/.local/clawdie-ops/"
                                       "bin/clawdie-ops\n", exited=0)])
    found = toolinstall.find(c, NEW, __version__)
    assert (found.path, found.how) == ("/home/c/.local/clawdie-ops/bin/clawdie-ops",
                                       "installed earlier")
    # too old, and nothing better installed
    c = MockContext(run=[Result(stdout="clawdie-ops 0.0.1\n", exited=0),
                         Result(exited=1)])
    found = toolinstall.find(c, NEW, __version__)
    assert (found.path, found.version, found.how) == (None, "0.0.1", "older")


def test_the_probe_of_an_install_dir_expands_home_on_the_host():
    c = MockContext(run=Result(exited=1))
    toolinstall.probe_installed(c, NEW)
    cmd = c.run.call_args[0][0]
    assert cmd.startswith("sh -c ") and cmd.endswith("'~/.local/clawdie-ops'")
    assert '"$HOME/${d#"~/"}"' in cmd


@pytest.mark.parametrize("code, words", [
    (20, ["'python3.11' not found", "clawdie.hosts.newbox.install.python"]),
    (21, ["needs Python 3.11 or newer"]),
    (22, ["cannot create the virtualenv", "python3-venv"]),
    (23, ["pip could not install", "pip_args", "system_site_packages"]),
    (24, ["failed (exit 24)"]),
])
def test_install_failures_say_what_to_do(code, words):
    err = toolinstall._install_error(NEW, toolinstall.settings(NEW), code, "some\ntail\n")
    assert isinstance(err, HostError)
    text = err.message + " -> " + err.hint
    assert "newbox" in err.message
    for w in words:
        assert w in text


def test_the_plan_text_names_the_python_dir_and_the_minimum():
    text = toolinstall.plan_text(NEW, __version__)
    assert f"older than {__version__}" in text and "python3.11 -m venv" in text
    assert "~/.local/clawdie-ops" in text
    quiet = Host(name="b", ssh="b", install={"system_site_packages": True,
                                             "pip_args": "--index-url https://u:pw@m/simple"})
    text = toolinstall.plan_text(quiet, None)
    assert "--system-site-packages" in text and "pw" not in text


def test_inventory_validates_the_install_entry():
    hosts = inventory.hosts({"hosts": {"nb": {"install": {"python": "python3.12",
                                                          "system_site_packages": True}}}})
    assert hosts["nb"].install == {"python": "python3.12", "system_site_packages": True}
    with pytest.raises(ConfigError, match="unknown key: pyhton"):
        inventory.hosts({"hosts": {"nb": {"install": {"pyhton": "x"}}}})
    with pytest.raises(ConfigError, match="system_site_packages must be a true/false"):
        inventory.hosts({"hosts": {"nb": {"install": {"system_site_packages": "yes"}}}})
