"""The pipeline file: every problem named with file, line and field, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from boride.model import PipelineError, load
from boride.pipeline import Plan
from boride.types import Kind


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "tpl").mkdir(exist_ok=True)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(PipelineError) as info:
        load(path)
    return info.value.problems


GOOD = """\
template: ./tpl
parallelism: 3
processors:
  - name: upper
    command: [python3, upper.py]
    image: local/upper:1
    config: {name: cyan, nested: [1, 2, {a: null}]}
    files:
      - {root: null, glob: "src/**/*.txt", exclude: ["**/*.bak"], type: template}
      - {glob: "assets/*", type: copy}
resolvers:
  - name: concat
    command: [python3, concat.py]
    files: ["src/**"]
plugins:
  - name: stamp
    command: [python3, stamp.py]
    config: {stamp: ok}
"""


def test_good_file_and_relative_paths(tmp_path: Path) -> None:
    pipeline = load(write(tmp_path, GOOD))
    assert pipeline.template_dir == (tmp_path / "tpl").resolve()
    assert pipeline.parallelism == 3
    assert pipeline.processors[0].config == {"name": "cyan", "nested": [1, 2, {"a": None}]}
    assert pipeline.processors[0].files[1].protocol().wire() == {
        "root": None, "glob": "assets/*", "exclude": [], "type": "copy"}
    kinds = [(c.name, c.kind, c.cwd) for c in pipeline.components()]
    assert kinds == [("upper", Kind.PROCESSOR, tmp_path.resolve()),
                     ("concat", Kind.RESOLVER, tmp_path.resolve()),
                     ("stamp", Kind.PLUGIN, tmp_path.resolve())]
    plan = Plan.from_pipeline(pipeline)
    assert plan.resolvers[0].files == ("src/**",)
    assert plan.plugins[0].config == {"stamp": "ok"}
    assert plan.resolvers[0].config == {}  # SDK resolvers and plugins need an object


def test_unknown_and_mistyped_fields_name_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    image: local/upper:1\n",
                                        "    image: local/upper:1\n    colour: red\n")
                 .replace("parallelism: 3", "parallelism: lots"))
    found = problems(path)
    assert f"{path}:2: parallelism: Input should be a valid integer, unable to parse string " \
           "as an integer" in found
    assert f"{path}:7: processors[0].colour: unknown field" in found


def test_bad_glob_type_points_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("type: copy", "type: weird"))
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:10: processors[0].files[1].type:")


def test_duplicate_names_across_kinds(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("name: stamp", "name: upper"))
    assert problems(path) == [
        f"{path}:16: plugins[0].name: duplicate name 'upper' (names must be unique in the file)"]


def test_missing_required_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "template: ./tpl\n")
    assert problems(path) == [f"{path}:1: processors: required field is missing"]
    path = write(tmp_path, "processors:\n  - name: a\n")
    assert problems(path) == [f"{path}:1: template: required field is missing"]
    path = write(tmp_path, "template: ./tpl\nprocessors: []\n")
    assert "processors: List should have at least 1 item" in problems(path)[0]


def test_missing_template_folder(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("./tpl", "./nowhere"))
    assert problems(path) == [
        f"{path}:1: template: folder {(tmp_path / 'nowhere').resolve()} does not exist"]


@pytest.mark.parametrize(("text", "expected"), [
    ("template: [\n", "not valid YAML"),
    ("", "the file is empty"),
    ("- a\n- b\n", "expected a mapping"),
    ("template: ./tpl\nprocessors:\n  - name: 'bad name!'\n", "processors[0].name"),
    ("template: ./tpl\nprocessors:\n  - {name: a, command: []}\n", "processors[0].command"),
])
def test_broken_files(tmp_path: Path, text: str, expected: str) -> None:
    (problem, *_) = problems(write(tmp_path, text))
    assert expected in problem


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    assert problems(tmp_path / "none.yaml") == [f"{tmp_path / 'none.yaml'}: no such file"]
    assert "is a folder" in problems(tmp_path)[0]
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert "cannot read" in problems(binary)[0]
