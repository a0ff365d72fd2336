"""Reading the user's files (pipeline files, registry files) within bounds: a size bound checked
before the file is read (:func:`read_text`), and YAML composed with a bound on what its aliases
expand to, how deep it nests, and no alias inside the node it names (:func:`compose`).

YAML's aliases let a 1 KB file stand for a billion nodes ("billion laughs"): PyYAML composes
it in no time (an alias is the anchored node itself, shared), but anything that walks the
result as a tree (a validation, a copy) takes forever. So the tree's size is counted on the
graph, each shared node once (its size remembered), and refused beyond what the file itself
holds plus :data:`ALIAS_BUDGET`: a file without aliases always passes, a few anchors reused
in a few places pass, an exponential expansion is refused as soon as it is composed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from boride.errors import InputError

__all__ = ["ALIAS_BUDGET", "MAX_DEPTH", "MAX_FILE", "BoundExceeded", "compose", "construct",
           "read_text"]

MAX_FILE = 1 << 20  # bytes of a pipeline or registry file
ALIAS_BUDGET = 100_000  # nodes aliases may add to a file's own
MAX_DEPTH = 100  # collections within collections


class BoundExceeded(InputError):
    """A file beyond a bound; ``str()`` is one line naming the file."""


def read_text(path: Path, what: str, limit: int = MAX_FILE) -> str:
    """The UTF-8 text of the regular file ``path``, refused (:class:`BoundExceeded`) when over
    ``limit`` bytes, before it is read; OSError, UnicodeDecodeError as reading raises them.
    ``what``: the kind of file, for messages ("pipeline file")."""
    # O_NONBLOCK: a FIFO without a writer must not block the open (it is refused below)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            raise BoundExceeded(f"{path}: not a regular file (a {what} is read from one)")
        if st.st_size > limit:
            raise BoundExceeded(_too_big(path, what, limit))
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)  # the file may have grown since
    finally:
        os.close(fd)
    if len(data) > limit:
        raise BoundExceeded(_too_big(path, what, limit))
    return data.decode("utf-8")


def _too_big(path: Path, what: str, limit: int) -> str:
    return f"{path}: the {what} is larger than {limit >> 20} MiB" if limit >= 1 << 20 else \
        f"{path}: the {what} is larger than {limit} bytes"


def compose(text: str, source: str) -> yaml.Node | None:
    """The YAML node graph of ``text`` (None for an empty document), refused
    (:class:`BoundExceeded`, naming ``source``) when it nests deeper than :data:`MAX_DEPTH`,
    has an alias inside the node it names, or expands beyond its own nodes plus
    :data:`ALIAS_BUDGET`; yaml.YAMLError for YAML that is not valid."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise BoundExceeded(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    if node is not None:
        check(node, source)
    return node


def check(root: yaml.Node, source: str) -> None:
    """Refuse (:class:`BoundExceeded`) the graph ``root`` when its tree is too big or too deep,
    or has a cycle; see :func:`compose`. Iterative: the graph may be deep."""
    size: dict[int, int] = {}  # node -> nodes of its tree, aliases expanded
    depth: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being counted (a cycle meets one)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_.discard(key)
            if depth[key] > MAX_DEPTH:
                raise BoundExceeded(f"{source}: nested more than {MAX_DEPTH} levels deep")
            if size[key] > len(size) + ALIAS_BUDGET:
                raise BoundExceeded(f"{source}: its aliases expand to more than "
                                    f"{ALIAS_BUDGET} nodes beyond the file's own")
            continue
        if key in size:
            continue
        if key in open_:
            mark = node.start_mark
            raise BoundExceeded(f"{source}:{mark.line + 1}: an alias refers to a node that "
                                "holds it (a cycle)")
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def construct(node: yaml.Node) -> object:
    """Python data from a node :func:`compose` returned (as ``yaml.safe_load`` makes it)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()
