"""cloud-init's state read from the files it documents (lib/guest_state.py), checked against cloud-init
itself: its own status_wrapper writes the files at every point of a boot and its own
get_status_details says what `cloud-init status` would (tests/harness/cloudinit_states.py, run with the
system's python3 and the cloud-init package `make test` installs). The command runs for real under
bash with /run bind-mounted from a temporary directory (a private mount namespace): the files when
this boot has them, `cloud-init status` (the real one) when it has none.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lib import guest_state
from lib.steps.virt import _CLOUD_INIT

HARNESS = Path(__file__).parent / "harness" / "cloudinit_states.py"


def _boot(errors: str = "") -> list[dict[str, Any]]:
    out = subprocess.run(["/usr/bin/python3", str(HARNESS), errors], check=True, capture_output=True, text=True,
                         timeout=120)
    states: list[dict[str, Any]] = json.loads(out.stdout)
    return states


@pytest.mark.parametrize("errors", ["", "init", "modules-config", "modules-final"])
def test_the_files_say_what_cloud_init_says_at_every_point_of_a_boot(errors: str) -> None:
    states = _boot(errors)
    assert [s["says"] for s in states][-1] == ("error" if errors else "done")
    for state in states:
        if state["status_json"]:  # before init-local there are no files: the fallback answers
            assert guest_state.from_files(state["status_json"], state["result_json"]) == state["says"], state["when"]


def _run_with_run_dir(run: Path, command: str) -> str:
    """The command under bash with /run replaced by `run`, in a mount namespace of its own."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    out = subprocess.run(["unshare", "-m", "bash", "-c", f"mount --bind {run} /run && {command}"],
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_command_reads_this_boots_files_and_falls_back_to_cloud_init_status(tmp_path: Path) -> None:
    final = _boot()[-1]
    run = tmp_path / "run"
    (run / "cloud-init").mkdir(parents=True)
    # No status.json in this boot yet: the real `cloud-init status` answers (the fallback).
    assert guest_state.parse(_run_with_run_dir(run, _CLOUD_INIT)) == "not run"
    (run / "cloud-init" / "status.json").write_text(final["status_json"])
    assert guest_state.parse(_run_with_run_dir(run, _CLOUD_INIT)) == "running"  # result.json not yet written
    (run / "cloud-init" / "result.json").write_text(final["result_json"])
    answer = _run_with_run_dir(run, _CLOUD_INIT)
    assert "== numa-k3s: status.json" in answer  # read from the files, cloud-init not started
    assert guest_state.parse(answer) == "done"


def test_parse_of_the_fallback_and_of_broken_files() -> None:
    assert guest_state.parse("status: done\n") == "done"
    assert guest_state.parse("status: not installed\n") == "not installed"
    assert guest_state.parse("") == "no answer"
    assert guest_state.from_files("{not json", "") == "unreadable status.json"
