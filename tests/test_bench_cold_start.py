"""bench/cold_start.py's generated pipelines are valid (a smoke test of the generator, no
timing): 40 distinct processors load as a pipeline of 40 distinct commands, and a small one
really builds on the local runtime with the bench's own run, its watcher seeing the components."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.cold_start import ROOT, Arm, boride_run, expected_outputs, generate
from boride.model import load


def test_forty_generated_processors_are_a_valid_pipeline_of_distinct_scripts(
        tmp_path: Path) -> None:
    pipeline = load(generate(tmp_path / "p40", 40, sys.executable))
    assert len(pipeline.processors) == 40
    assert pipeline.parallelism == 2
    scripts = [tmp_path / "p40" / p.command[1] for p in pipeline.processors]
    assert len(set(scripts)) == 40
    texts = {s.read_text() for s in scripts}
    assert len(texts) == 40  # distinct text: no cache entry or instance could be shared
    for script in scripts:
        compile(script.read_text(), str(script), "exec")


@pytest.mark.sandbox
@pytest.mark.usefixtures("no_leftovers")
def test_three_generated_processors_build_and_are_seen_alive(tmp_path: Path) -> None:
    pipeline = generate(tmp_path / "p3", 3, sys.executable)
    figures = boride_run(Arm("smoke", ROOT, None), sys.executable, pipeline, tmp_path,
                         parallelism=2, watch=True, expect=expected_outputs(3))
    assert 1 <= figures["most alive"] <= 4  # at most 2 x parallelism alive
    assert figures["boride peak MB"] > 0
