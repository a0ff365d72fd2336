"""Every way a component fails, provoked on the fake runtime: each failure is reported naming
the component, what went wrong and the component's own error line (or its last output), and
the build leaves nothing running. Also the timeouts: the ready timeout (per component) and the
build's timeout (a call that never answers)."""

from __future__ import annotations

from pathlib import Path

from boride import diagnose
from boride.pipeline import BuildResult
from boride.runtime.fake import Behaviour, Call, FakeRuntime
from tests.fake_support import by_name, plan, plugin, processor, run


async def one_failing(tmp_path: Path, template: Path, behaviour: Behaviour, *,
                      ready: float = 5.0, timeout: float | None = None) -> BuildResult:
    """A build of a good processor and ``bad`` (``behaviour``), then a plugin."""
    runtime = FakeRuntime({"ok": Behaviour(), "bad": behaviour, "plug": Behaviour()})
    result = await run(plan(template, [processor("fine"), processor("culprit", "bad")],
                            plugins=[plugin("stamp")]),
                       runtime, tmp_path, ready=ready, timeout=timeout)
    assert not result.ok
    assert not (tmp_path / "out").exists()
    assert runtime.live == set() and runtime.areas == {}  # everything stopped, areas closed
    return result


def the_error(result: BuildResult) -> str:
    """The one error of the build, which names the culprit."""
    (error,) = result.errors
    assert error.startswith("processor 'culprit': "), error
    status, own = by_name(result)["culprit"]
    assert status in ("failed", "cancelled") and own == error.removeprefix("processor 'culprit': ")
    return error


async def test_a_slow_start_is_waited_for(tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour(), "slow": Behaviour(ready_after=0.05)})
    result = await run(plan(template, [processor("fine"), processor("slow", "slow", suffix="!")]),
                       runtime, tmp_path)
    assert result.ok, result.errors
    assert (tmp_path / "out" / "README.md").read_text() == "# readme\n!"


async def test_a_start_slower_than_the_ready_timeout_names_the_component(
        tmp_path: Path, template: Path) -> None:
    result = await one_failing(tmp_path, template, Behaviour(
        ready_after=30, output=("loading the model (2 GB)...",)), ready=0.1)
    error = the_error(result)
    assert "not ready after 0.1s (GET / never answered 200)" in error
    assert "loading the model (2 GB)..." in error  # its own last output
    status = by_name(result)
    assert status["fine"][0] == "ok" and status["stamp"][0] == "skipped"


async def test_never_ready_names_the_component_and_its_error_line(tmp_path: Path,
                                                                  template: Path) -> None:
    result = await one_failing(tmp_path, template, Behaviour(
        never_ready=True, output=("ConnectionError: cannot reach the licence server",)),
                               ready=0.1)
    error = the_error(result)
    assert "not ready after 0.1s (GET / never answered 200)" in error
    assert "its error: ConnectionError: cannot reach the licence server" in error


async def test_a_component_exiting_at_start_is_reported_with_its_exit_code_and_error(
        tmp_path: Path, template: Path) -> None:
    result = await one_failing(tmp_path, template, Behaviour(
        exit_at_start=3, error="ModuleNotFoundError: No module named 'cyanprintsdk'"))
    error = the_error(result)
    assert "exited with code 3 before it was ready" in error
    assert "its error: ModuleNotFoundError: No module named 'cyanprintsdk'" in error
    assert 'File "' not in error  # the stack is left out


async def test_dying_during_a_call_names_the_component_and_its_error_line(
        tmp_path: Path, template: Path) -> None:
    result = await one_failing(tmp_path, template, Behaviour(
        fails="die", exit_code=7, error="ReferenceError: Can't find variable: color"))
    error = the_error(result)
    assert "died during its call: exited with code 7" in error
    assert "its error: ReferenceError: Can't find variable: color" in error
    assert " at handler " not in error  # the frames are left out


async def test_a_hanging_call_is_stopped_by_the_build_timeout_naming_the_component(
        tmp_path: Path, template: Path) -> None:
    result = await one_failing(tmp_path, template, Behaviour(fails="hang"), timeout=0.3)
    assert result.errors == ["processor 'culprit': its call had not answered when the build's "
                             "0.3s timeout ran out"]
    assert by_name(result)["culprit"] == (
        "failed", "its call had not answered when the build's 0.3s timeout ran out")
    assert by_name(result)["fine"][0] == "ok"
    assert by_name(result)["stamp"][0] == "skipped"


async def test_the_build_timeout_names_a_first_processor_that_is_not_ready_yet(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour(), "mute": Behaviour(never_ready=True)})
    result = await run(plan(template, [processor("mute", "mute"), processor("fine")]),
                       runtime, tmp_path, timeout=0.2)
    assert not result.ok and runtime.live == set()
    (error,) = result.errors
    assert error.startswith("processor 'mute': not ready when the build's 0.2s timeout ran out "
                            "(GET / never answered 200)"), error
    assert by_name(result)["mute"][0] == "failed"


async def test_http_500_names_the_component_and_the_exception_it_printed(
        tmp_path: Path, template: Path) -> None:
    result = await one_failing(tmp_path, template, Behaviour(
        fails="http_500", error="OSError: [Errno 28] No space left on device"))
    error = the_error(result)
    assert "POST /api/process answered HTTP 500: Internal Server Error" in error
    assert "its error: OSError: [Errno 28] No space left on device" in error


async def test_a_body_that_is_not_json_is_reported_with_what_it_said(tmp_path: Path,
                                                                     template: Path) -> None:
    result = await one_failing(tmp_path, template, Behaviour(
        fails="not_json", error="error: upstream connect error"))
    error = the_error(result)
    assert "answered a body that is not JSON: <html><body>502 Bad Gateway</body></html>" in error
    assert "its error: error: upstream connect error" in error


async def test_json_of_the_wrong_shape_names_the_missing_field(tmp_path: Path,
                                                               template: Path) -> None:
    result = await one_failing(tmp_path, template, Behaviour(
        fails="wrong_shape", error="TypeError: 'ProcessorOutput' object is not iterable"))
    error = the_error(result)
    assert "its error: TypeError: 'ProcessorOutput' object is not iterable" in error
    assert "answered JSON without the expected fields: outputDir (Field required)" in error
    assert '{"status": "done"}' in error


async def test_an_output_folder_outside_the_area_is_refused(tmp_path: Path,
                                                            template: Path) -> None:
    async def elsewhere(call: object) -> dict[str, str]:
        return {"outputDir": str(tmp_path)}

    result = await one_failing(tmp_path, template, Behaviour(answer=elsewhere))
    assert "returned an unusable outputDir" in the_error(result)


async def test_an_output_folder_of_the_area_but_not_its_own_is_refused(tmp_path: Path,
                                                                       template: Path) -> None:
    async def the_areas_top(call: Call) -> dict[str, str]:  # (every other folder is there)
        return {"outputDir": str(Path(call.body["writeDir"]).parent)}

    result = await one_failing(tmp_path, template, Behaviour(answer=the_areas_top))
    assert "returned an unusable outputDir" in the_error(result)
    assert "is neither its writeDir" in the_error(result)


async def test_a_failing_plugin_is_named_and_stops_the_plugins_after_it(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour(), "plug": Behaviour(),
                           "broken": Behaviour(fails="http_500",
                                               error="PermissionError: [Errno 13] denied")})
    result = await run(plan(template, [processor("p")],
                            plugins=[plugin("first"), plugin("bad", "broken"),
                                     plugin("after")]), runtime, tmp_path)
    assert not result.ok
    status = by_name(result)
    assert status["first"][0] == "ok" and status["after"][0] == "skipped"
    assert status["bad"][0] == "failed"
    assert "its error: PermissionError: [Errno 13] denied" in status["bad"][1]
    assert "after" not in runtime.counts.started
    assert runtime.live == set()


async def test_components_the_runtime_cannot_run_are_named_before_anything_starts(
        tmp_path: Path, template: Path) -> None:
    runtime = FakeRuntime({"ok": Behaviour()})
    result = await run(plan(template, [processor("fine"), processor("ghost", "no/such:1")]),
                       runtime, tmp_path)
    assert result.errors == ["processor 'ghost': no fake behaviour for 'no/such:1'"]
    assert runtime.counts.started == []
    assert {c.status for c in result.components} == {"skipped"}


def test_a_node_error_line_without_a_class_name_is_found() -> None:
    """``throw new Error("...")`` in Node or Bun prints ``Error: ...`` above the frames."""
    lines = ["/app/index.js:1", 'throw new Error("boom")', "^", "", "Error: boom",
             "    at [eval]:1:7", "    at runScriptInThisContext (node:internal/vm:209:10)"]
    assert diagnose.error_line(lines) == "Error: boom"
    assert diagnose.error_line(["Error handling request"]) is None  # aiohttp's log line
