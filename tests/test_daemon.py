"""``python3 -m boride.daemon``, the entry point of boride's image, without an engine: what each
command runs and how it fails (one line, never a traceback). The image itself and the daemon
on a real engine: tests/test_daemon_container.py."""

from __future__ import annotations

import pytest

from boride import daemon


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The ``boride`` command lines the dispatcher runs (instead of running them)."""
    calls: list[list[str]] = []

    def fake(args: list[str]) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr(daemon, "_boride", fake)
    return calls


def test_start_is_the_default_and_serves_as_the_coordinator(ran: list[list[str]]) -> None:
    assert daemon.main([]) == 0
    assert daemon.main(["start", "--registry", "https://registry.example"]) == 0
    serve = ["serve", "--runtime", "docker", "--host", "0.0.0.0", "--port", "9000",
             "--trusted-network", "--dev-root", "/"]
    assert ran == [serve, [*serve, "--registry", "https://registry.example"]]


def test_cleanup_is_clean_all_or_one_session(ran: list[list[str]]) -> None:
    assert daemon.main(["cleanup"]) == 0
    assert daemon.main(["cleanup", "--session", "abc"]) == 0
    assert ran == [["clean", "--all"], ["clean", "--session", "abc"]]


def test_boride_commands_pass_through_unchanged(ran: list[list[str]]) -> None:
    assert daemon.main(["clean", "--session", "x"]) == 0
    assert daemon.main(["--version"]) == 0
    assert ran == [["clean", "--session", "x"], ["--version"]]


@pytest.mark.parametrize(("argv", "words"), [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["--frob"], "unknown command '--frob'"),
    (["setup", "extra"], "setup: unexpected arguments 'extra'"),
    (["cleanup", "--all"], "cleanup: unexpected arguments '--all'"),
])
def test_bad_arguments_fail_in_one_line(argv: list[str], words: str,
                                        capsys: pytest.CaptureFixture[str],
                                        ran: list[list[str]]) -> None:
    assert daemon.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("boride: ") and words in err, err
    assert ran == []


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("start", "setup", "cleanup", "run", "serve", "clean"):
        assert f"\n  {command}" in out, out


def test_an_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: list[str]) -> int:
        raise RuntimeError("boom")

    monkeypatch.setitem(daemon.COMMANDS, "setup", broken)
    assert daemon.main(["setup"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "boom" in err and "Traceback" not in err, err
