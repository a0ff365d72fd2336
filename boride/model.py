"""The pipeline file: YAML, validated completely before anything starts.

Errors name the file, the field and the problem, with the line where the YAML has one.
Relative paths are relative to the file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from boride import inputs, protocol
from boride.errors import InputError
from boride.types import Component, Kind

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$")]


class PipelineError(InputError):
    """A pipeline file that cannot be used; ``str()`` is the whole message for the user."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Glob(_Strict):
    root: str | None = None
    glob: str = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    type: Literal["template", "copy"] = "template"

    def protocol(self) -> protocol.Glob:
        """As the component protocol sends it."""
        return protocol.Glob(self.glob, self.root, tuple(self.exclude), self.type)


class _ComponentSpec(_Strict):
    name: Name
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    image: str | None = Field(default=None, min_length=1)
    fork: bool = True  # false: the local runtime starts it in an interpreter of its own


class ProcessorSpec(_ComponentSpec):
    config: Any = None
    files: list[Glob] = Field(default_factory=list)
    cache: bool = True  # false: never reuse its output (a processor that is not pure)


class ResolverSpec(_ComponentSpec):
    files: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)


class PluginSpec(_ComponentSpec):
    config: dict[str, Any] = Field(default_factory=dict)


class Pipeline(_Strict):
    template: Path
    parallelism: int | None = Field(default=None, ge=1, le=1024)
    cache: bool = False  # reuse unchanged processors' outputs (as ``boride run --cache``)
    processors: list[ProcessorSpec] = Field(min_length=1)
    resolvers: list[ResolverSpec] = Field(default_factory=list)
    plugins: list[PluginSpec] = Field(default_factory=list)
    # Where the file lives; relative paths (template, commands) are taken from here.
    base: Path = Field(default=Path("."), exclude=True)

    def duplicate_names(self) -> list[tuple[tuple[str | int, ...], str]]:
        """(location, message) for every component name used twice in the file."""
        seen: set[str] = set()
        found: list[tuple[tuple[str | int, ...], str]] = []
        for field_name in ("processors", "resolvers", "plugins"):
            for i, spec in enumerate(getattr(self, field_name)):
                if spec.name in seen:
                    found.append(((field_name, i, "name"), f"duplicate name {spec.name!r} "
                                  "(names must be unique in the file)"))
                seen.add(spec.name)
        return found

    @property
    def template_dir(self) -> Path:
        return (self.base / self.template).resolve()

    def components(self) -> list[Component]:
        out: list[Component] = []
        for kind, group in ((Kind.PROCESSOR, self.processors), (Kind.RESOLVER, self.resolvers),
                            (Kind.PLUGIN, self.plugins)):
            for spec in group:
                out.append(Component(spec.name, kind, tuple(spec.command or ()) or None,
                                     spec.image, self.base, fork=spec.fork))
        return out


def _with_lines(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    """Build Python data from a YAML node, recording each value's line (1-based) by path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if not isinstance(key, str | int):
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: keys must be text")
            out[key] = _with_lines(value_node, (*path, key), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_with_lines(v, (*path, i), lines) for i, v in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    return yaml.SafeLoader(yaml.serialize(node)).get_single_data()


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _field(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse(text: str, source: str, base: Path) -> Pipeline:
    """Validate a pipeline given as YAML text; ``source`` names it in messages."""
    try:
        node = inputs.compose(text, source)
    except inputs.BoundExceeded as exc:
        raise PipelineError([str(exc)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PipelineError([f"{source}{where}: not valid YAML: {problem}"]) from None
    if node is None:
        raise PipelineError([f"{source}: the file is empty"])
    lines: dict[tuple[Any, ...], int] = {}
    try:
        data = _with_lines(node, (), lines)
    except yaml.YAMLError as exc:
        raise PipelineError([f"{source}: not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise PipelineError([f"{source}:{lines[()]}: expected a mapping with 'template' and "
                             f"'processors', found {type(data).__name__}"])
    try:
        pipeline = Pipeline.model_validate({**data, "base": base})
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            msg = {"extra_forbidden": "unknown field",
                   "missing": "required field is missing"}.get(err["type"], err["msg"])
            messages.append(_at(source, tuple(err["loc"]), lines, msg))
        raise PipelineError(messages) from None
    problems = [(loc, msg) for loc, msg in pipeline.duplicate_names()]
    if not pipeline.template_dir.is_dir():
        problems.append((("template",), f"folder {pipeline.template_dir} does not exist"))
    if problems:
        raise PipelineError([_at(source, loc, lines, msg) for loc, msg in problems])
    return pipeline


def _at(source: str, loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int], msg: str) -> str:
    line = _line_for(loc, lines)
    return f"{source}:{line}: {_field(loc)}: {msg}" if line else f"{source}: {_field(loc)}: {msg}"


def load(path: Path) -> Pipeline:
    """Read and validate a pipeline file (at most :data:`boride.inputs.MAX_FILE` bytes)."""
    try:
        text = inputs.read_text(path, "pipeline file")
    except inputs.BoundExceeded as exc:
        raise PipelineError([str(exc)]) from None
    except FileNotFoundError:
        raise PipelineError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise PipelineError([f"{path}: is a folder, expected a pipeline file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError([f"{path}: cannot read: {exc}"]) from None
    return parse(text, str(path), path.resolve().parent)
