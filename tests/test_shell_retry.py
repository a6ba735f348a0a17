"""Commands as values (quoting, secrets) and retry policies as values (config, injected sleep)."""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib.retry import ConfigError, Policies, Policy, policies_from_config, retrying
from lib.shell import MASK, Secret, mask, rooted, sh


@given(st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s))
def test_any_value_reaches_the_shell_as_one_literal_word(value: str) -> None:
    cmd = sh("printf '%s' {v}", v=value)
    out = subprocess.run(["sh", "-c", cmd.real], capture_output=True, check=True).stdout
    assert out == value.encode("utf-8", "surrogateescape")


def test_hostile_values_stay_inert() -> None:
    cmd = sh("echo {v}", v="$(touch /tmp/pwned); rm -rf /")
    assert cmd.real == "echo '$(touch /tmp/pwned); rm -rf /'"


def test_secret_prints_masked_everywhere() -> None:
    token = Secret("s3cr3t-value-81f2")
    assert str(token) == repr(token) == f"{token}" == f"{token:>20}" == MASK
    cmd = sh("k3s agent --token {t}", t=token)
    assert cmd.shown == "k3s agent --token ***" and "s3cr3t-value-81f2" in cmd.real
    assert "s3cr3t" not in repr(cmd) and "s3cr3t" not in str(cmd)
    assert mask("echoed s3cr3t-value-81f2 back") == "echoed *** back"
    with pytest.raises(ValueError, match="must not be empty"):
        Secret("")
    err = RuntimeError(f"failed with {token}")
    assert "s3cr3t" not in str(err)


def test_list_values_become_several_words() -> None:
    assert sh("ls {paths}", paths=["a b", "c"]).real == "ls 'a b' c"


def test_rooted() -> None:
    assert rooted("/", "/sys/x") == "/sys/x"
    assert rooted("/tmp/root", "/sys/x") == "/tmp/root/sys/x"


def test_policy_overrides_from_invoke_yaml() -> None:
    policies = policies_from_config({"converge": {"deadline": 60}, "transient": {"exit_codes": [100]}})
    assert policies.converge.deadline == 60 and policies.transient.exit_codes == (100,)
    assert policies.ssh_connect == Policies().ssh_connect


@pytest.mark.parametrize(("config", "message"), [
    ({"sshconnect": {"attempts": 1}}, "retries.sshconnect: unknown policy"),
    ({"converge": {"deadlin": 1}}, "retries.converge: unknown keys ['deadlin']"),
])
def test_bad_policy_config_is_an_error(config: dict[str, dict[str, int]], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        policies_from_config(config)


def test_retry_stops_after_attempts_with_injected_sleep() -> None:
    sleeps: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        raise OSError("reset")

    with pytest.raises(OSError):
        retrying(Policy("t", attempts=4, wait_initial=1, wait_max=3), lambda e: True, sleeps.append)(flaky)
    assert calls == 4 and sleeps == [1, 2, 3]


def test_permanent_errors_are_not_retried() -> None:
    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("permanent")

    with pytest.raises(ValueError):
        retrying(Policies().transient, lambda e: isinstance(e, OSError), lambda s: None)(broken)
    assert calls == 1


def test_deadline_counts_injected_sleep() -> None:
    sleeps: list[float] = []
    with pytest.raises(TimeoutError):
        retrying(Policy("c", attempts=0, wait_initial=2, wait_max=10, deadline=30), lambda e: True,
                 sleeps.append)(lambda: (_ for _ in ()).throw(TimeoutError()))
    assert sum(sleeps) >= 30 and sum(sleeps[:-1]) < 30
