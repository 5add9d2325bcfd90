"""The runner: quoting, the shell, masking, the failure it raises, the recorder; and the
plan comparison the recorder tests use."""
from __future__ import annotations

import pytest
from invoke import Config, MockContext, Result

from clawdie_ops import runner
from clawdie_ops.errors import CommandFailed, ZfsError
from clawdie_ops.steps import in_order, same_command


class Seen(MockContext):
    """A MockContext that keeps the keyword arguments of each run."""

    def __init__(self, result: Result, **kw):
        super().__init__(run=result, repeat=True, **kw)
        self.calls: list[tuple[str, dict]] = []

    def run(self, command, **kw):
        self.calls.append((command, kw))
        return super().run(command, **kw)


def test_an_argv_is_quoted_in_one_place_and_a_bare_string_is_refused():
    assert runner.line(["zfs", "list", "pool/a b"]) == "zfs list 'pool/a b'"
    assert runner.line(runner.Shell("a && b")) == "a && b"
    with pytest.raises(TypeError):
        runner.line("zfs list")  # type: ignore[arg-type]


def test_commands_run_in_posix_sh_captured_with_stdin_closed():
    c = Seen(Result("ok\n"))
    runner.run(c, ["true"])
    command, kw = c.calls[0]
    assert command == "true"
    assert kw["shell"] == "/bin/sh" and kw["hide"] is True and kw["warn"] is True
    assert kw["in_stream"] is False
    tcsh = Seen(Result(""), config=Config(overrides={"clawdie": {"shell": "/bin/dash"}}))
    runner.run(tcsh, ["true"])
    assert tcsh.calls[0][1]["shell"] == "/bin/dash"


def test_a_failure_carries_the_masked_command_exit_code_tail_and_hint():
    stderr = "".join(f"line {i}\n" for i in range(20))
    c = Seen(Result("", stderr=stderr, exited=3))
    with pytest.raises(ZfsError) as exc:
        runner.run(c, ["zfs", "destroy", "tok-s3cret"], check=True, what="destroying x",
                   secrets=["tok-s3cret"], hint="check x", error=ZfsError)
    err = exc.value
    assert isinstance(err, CommandFailed)
    assert err.exited == 3 and err.hint == "check x"
    assert err.command == "zfs destroy ***"
    assert err.output == "line 15\nline 16\nline 17\nline 18\nline 19"
    assert err.message.startswith("destroying x failed: line 15") and "(exit 3)" in err.message
    assert runner.tail("x" * 2000) == "x" * runner.TAIL_CHARS


def test_the_recorder_sees_every_command_masked_in_order():
    seen: list[tuple[str, str]] = []
    c = Seen(Result(""))
    with runner.recording(lambda host, cmd: seen.append((host, cmd))):
        runner.run(c, ["a", "pw=hunter22"], secrets=["hunter22"])
        runner.run(c, runner.Shell("b | c"), host="newbox")
    runner.run(c, ["not", "recorded"])
    assert seen == [("this host", "a pw=***"), ("newbox", "b | c")]


def test_planned_commands_match_what_ran_placeholders_included():
    assert same_command("clawdie-ops restore '<archive>' --yes", "clawdie-ops restore /b/x --yes")
    assert same_command("pg_dump -f '<spool>/m.sql' --snapshot=<exported-snapshot> m",
                        "pg_dump -f /s/p/m.sql --snapshot=00000003-1 m")
    assert not same_command("clawdie-ops restore '<archive>' --yes", "clawdie-ops restore --yes")
    ran = ["probe", "a", "c", "b", "d"]
    assert in_order([["a"], ["b", "c"], ["d"]], ran) == []  # b and c run at once
    assert in_order([["a"], ["d"], ["b"]], ran) == ["b"]  # b ran before d
    assert in_order([["x"]], ran) == ["x"]


def test_secrets_the_settings_know_are_masked_in_every_command_shown(tmp_path):
    from clawdie_ops.config import settings as config
    from tests.rig.content import env_text
    (tmp_path / ".env").write_text(env_text({"WARDEN_DB_IP": "10.0.0.3",
                                             "ANTHROPIC_API_KEY": "sk-ant-known-1"}))
    config.load(Config(overrides={"clawdie": {}}), root=tmp_path)
    seen: list[str] = []
    c = Seen(Result("", exited=1))
    with runner.recording(lambda host, cmd: seen.append(cmd)):
        with pytest.raises(CommandFailed) as exc:
            runner.run(c, runner.Shell("ANTHROPIC_API_KEY=sk-ant-known-1 npm start"),
                       check=True)
    assert seen == ["ANTHROPIC_API_KEY=*** npm start"]
    assert "sk-ant-known-1" not in exc.value.command + exc.value.message
