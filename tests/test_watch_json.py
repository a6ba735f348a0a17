"""monitor --watch's two faces and --json's numbers, on real HostRun values and through the real CLI."""

from __future__ import annotations

import io
import json
import re

from lib.checks_json import number_of, runs_json
from lib.monitor.watch import watch_samples
from lib.results import Check, HostRun, StepResult
from tests.harness.sysfs import HostShape
from tests.test_cli_runbooks import Cli, cli  # noqa: F401  (the fixture)


def sample(load: str, ok: bool) -> list[HostRun]:
    checks = (Check("emulator load", "< 50% of CPUs 0", load, ok), Check("remote memory", "< 1%", "0.00%", True))
    return [HostRun("hv1", "r", "monitor", "verify", 0.0, 1.0,
                    [StepResult("hv1", "monitor.sample", "vm-a", "ok" if ok else "failed", 0.0, 1.0, checks=checks)])]


def test_plain_watch_stamps_every_line_marks_breaches_in_words_and_counts_them() -> None:
    samples = iter([sample("12.0%", True), sample("72.0%", False), sample("10.0%", True)])
    out = io.StringIO()
    breached = watch_samples(lambda: next(samples), count=3, out=out, tty=False)
    assert breached == 1  # the caller exits 5 for this
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ hv1 vm-a \| ", line) for line in lines)
    assert [line.rsplit("| ", 1)[1] for line in lines if "emulator load" in line] == ["ok", "BREACH", "ok"]
    assert "\x1b[" not in out.getvalue()


def test_live_watch_redraws_one_screen_with_the_time_and_breach_in_text() -> None:
    import os

    os.environ["NO_COLOR"] = "1"  # honoured by rich: no colour codes, the word BREACH stays
    try:
        samples = iter([sample("72.0%", False), sample("72.0%", False)])
        out = io.StringIO()
        out.isatty = lambda: True  # type: ignore[method-assign]
        breached = watch_samples(lambda: next(samples), count=2, out=out, tty=True)
    finally:
        del os.environ["NO_COLOR"]
    text = out.getvalue()
    assert breached == 2
    assert "sample 2" in text and "BREACH" in text and re.search(r"monitor  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text)
    assert not re.search(r"\x1b\[[0-9;]*3[0-9]m", text)  # no foreground colours with NO_COLOR


def test_json_numbers_are_numbers() -> None:
    assert number_of("72.0%") == (72.0, "%") and number_of("12") == (12, "") and number_of("0-17,36-53") is None
    data = json.loads(runs_json(sample("72.0%", False)))
    (check, remote) = data["runs"][0]["results"][0]["checks"]
    assert check["found"] == 72.0 and check["found_unit"] == "%" and check["found_text"] == "72.0%"
    assert check["ok"] is False and check["outcome"] == "failed"
    assert remote["found"] == 0.0 and isinstance(data["runs"][0]["exit_code"], int)


def test_verify_json_through_the_cli(cli: Cli) -> None:  # noqa: F811
    cli.write(HostShape())
    out = cli("verify.bios", "--host=hv1", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)  # the whole stdout is one JSON document: no recap, no tables
    checks = {c["name"]: c for c in data["runs"][0]["results"][0]["checks"]}
    assert checks["sockets"]["found"] == 2 and checks["sockets"]["expected"] == 2
    assert checks["threads per core"]["found"] == 2
    inventory = cli("inventory.check", "--json")
    assert json.loads(inventory.stdout)["hosts"]["hv1"]["vms"] == 0 and inventory.returncode == 0
