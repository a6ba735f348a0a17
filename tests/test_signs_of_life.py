"""A step that waits says so: what it waits for, the attempt and the time; live on a TTY, plain lines
otherwise. A real sshd host and the engine's test steps (tests/engine_steps.py)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lib.output import Output
from lib.runbook import load_runbook
from lib.runner import Engine, RunOptions
from tests.engine_steps import REGISTRY
from tests.harness.inventory import write_host
from tests.harness.sshd import SshdFarm, SshHost
from tests.harness.world import FAST, World, WorldFlags


@pytest.fixture
def world(tmp_path: Path, sshd_farm: SshdFarm) -> Iterator[World]:
    w = World(tmp_path, REGISTRY)
    host: SshHost = sshd_farm.start(f"life-{tmp_path.name[-10:]}")
    write_host(w.hosts, "hv1", host)
    yield w
    sshd_farm.stop(host.name)


class FileAppears:
    """An injected sleep: records each wait; the awaited file appears during the third."""

    def __init__(self, path: Path) -> None:
        self.path, self.waits = path, 0

    def __call__(self, _seconds: float) -> None:
        self.waits += 1
        if self.waits == 3:
            self.path.touch()


def _run(world: World, tty: bool) -> str:
    sleep = FileAppears(world.state_file("hv1", "ready"))
    book = load_runbook(world.runbook("test.converge"), REGISTRY)
    options = RunOptions(runs_dir=world.runs, policies=FAST, flags=WorldFlags(state=str(world.state)), sleep=sleep)
    out = io.StringIO()
    output = Output(out, tty=tty)
    (run,) = Engine(book, options, output).run(world.loaded())
    output.close()
    assert run.exit_code == 0 and sleep.waits == 3
    return out.getvalue()


def test_plain_output_has_a_line_per_attempt_naming_what_it_waits_for(world: World) -> None:
    lines = [line for line in _run(world, tty=False).splitlines() if "waiting for" in line]
    assert [re.sub(r", \d+ s of", ", N s of", line) for line in lines] == [
        f"hv1 | test.converge hv1: attempt {n}, N s of 10 s, waiting for ready file (now absent)" for n in (1, 2, 3)]


def test_a_tty_shows_the_wait_under_the_host_line(world: World) -> None:
    text = _run(world, tty=True)
    # The live display redraws in place (cursor moves); the note is on its own line under the host's.
    notes = re.findall(r"test\.converge hv1: attempt [^\r\n]*", text)
    assert any(note.startswith("test.converge hv1: attempt 3, ") for note in notes), notes
    assert all(len(note) <= 80 for note in notes)  # one line at 80 columns, cut at the end if need be
