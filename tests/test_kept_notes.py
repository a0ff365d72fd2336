"""What a server writes into a session's labels to find it again after a restart, read back:
every template source survives the round trip, and a label that is not such a note (damaged,
or made by someone else) is no source at all, never an exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from boride.runtime.base import BlobImage, HostFolder, source_from_note, source_note
from boride.runtime.docker.kept import _note
from boride.runtime.docker.names import LABEL_NOTE, LABEL_OWNER, kept_labels


@pytest.mark.parametrize("source", [
    Path("/srv/templates/one"), HostFolder("/home/me/t", "/home/me"),
    BlobImage("registry.example/blob:1", "tid-1"), BlobImage("b:2", "try-x", shared=False),
    Path('/odd "quoted"\nname')])
def test_every_source_survives_the_round_trip(source: object) -> None:
    assert source_from_note(source_note(source)) == source  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [None, "", "not json", "[]", "1", '{"image": 1}',
                                  '{"host": "/x"}', '{"other": "y"}'])
def test_a_label_that_is_no_note_is_no_source(text: str | None) -> None:
    assert source_from_note(text) is None


def test_a_note_keeps_what_a_client_named_as_data() -> None:
    note = {"owner": "serve-9000", "kind": "session", "template": 'x", "owner": "evil'}
    labels = kept_labels(note)
    assert labels[LABEL_OWNER] == "serve-9000"
    assert _note(labels) == note  # the client's text stayed a value
    assert kept_labels({"kind": "session"}) == {}  # no owner: nothing kept (boride run)
    for damaged in ("{", '{"owner": 1}', '["owner"]'):
        assert _note({LABEL_NOTE: damaged}) is None
