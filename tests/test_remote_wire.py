"""What remote.py puts on the wire for a non-root user: `sudo -n -- sh -c <one quoted word>`.

No sudo is installed on the test machines, so the wrapper is checked by running the exact wire text
in a real shell where `sudo` is a function that drops its own options and runs the rest.
"""

from __future__ import annotations

import subprocess

from lib.remote import Endpoint, Session
from lib.retry import Policies
from lib.shell import Secret, sh


def run_as_sudo_would(wire: str) -> str:
    script = 'sudo() { [ "$1" = -n ] && [ "$2" = -- ] || exit 97; shift 2; "$@"; }\n' + wire
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout


def test_non_root_commands_are_wrapped_in_sudo_as_one_word() -> None:
    session = Session(Endpoint("hv1", "127.0.0.1", 22, "ops"), Policies())
    cmd = sh("printf '%s|' {a} {b}; echo \"$0\"", a="it's", b="$(id)")
    wire = session._wire(cmd, reveal=True)
    assert wire.startswith("sudo -n -- sh -c ")
    assert run_as_sudo_would(wire) == "it's|$(id)|sh\n"


def test_root_commands_are_not_wrapped_and_unsudoed_ones_never() -> None:
    root = Session(Endpoint("hv1", "127.0.0.1", 22, "root"), Policies())
    ops = Session(Endpoint("hv1", "127.0.0.1", 22, "ops"), Policies())
    cmd = sh("id -u")
    assert root._wire(cmd, reveal=True) == "id -u"
    assert ops._wire(sh("id -u", sudo=False), reveal=True) == "id -u"


def test_shown_wire_never_holds_the_secret() -> None:
    ops = Session(Endpoint("hv1", "127.0.0.1", 22, "ops"), Policies())
    cmd = sh("k3s agent --token {t}", t=Secret("wire-secret-0042"))
    assert "wire-secret-0042" not in ops._wire(cmd, reveal=False)
    assert "***" in ops._wire(cmd, reveal=False)
    assert "wire-secret-0042" in ops._wire(cmd, reveal=True)
