"""Bad input fuzzing (issue #8 item 5): inventories, command building, and the commands a plan renders.

1. Whatever a hosts file holds (wrong types, missing and extra keys, clashing or impossible pins,
   huge numbers, unicode and shell metacharacters, YAML that is not YAML), `invoke inventory.check`
   ends in "ok" or in exit 2 with one line per problem: never a traceback.
2. sh() quotes every value: a real shell parses the rendered command into exactly the argv the
   template meant, whatever the values hold; secrets show as ***; a NUL byte is refused by name.
3. For inventories that pass, every inventory value in the provision runbook's offline plan lands
   inside one shell token, intact, and virt-install's sub-option lists keep each path whole.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from invoke.config import Config
from invoke.context import Context
from invoke.exceptions import Exit

import tasks
from lib import shell
from lib.errors import InventoryError
from lib.inventory.load import LoadedHost, load_inventory
from lib.runbook import load_runbook
from lib.shell import Command, Secret, Value, sh
from lib.steps.registry import REGISTRY
from lib.targets import targets_for
from tests.harness.inventory import SPEC_TOPOLOGY
from tests.inventory_helpers import HOSTS, REAL_KEY, REPO, hv1, with_real_keys

# A few seconds per property in `make test`; FUZZ_EXAMPLES=5000 for a longer hunt by hand.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
LINE = re.compile(r"(ERROR|WARNING) \[[a-z0-9.-]+\] ")


# -- 1. inventory.check never crashes ---------------------------------------------------------------

def _paths(data: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path into a YAML document: mappings by key, lists by index."""
    if here:
        yield here
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*here, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, (*here, i))


BASE = hv1()
PATHS = sorted(_paths(BASE), key=repr)

# Harmless payloads: when quoting breaks, the shell test runs them (in a scratch directory).
SHELLISH = ["$(touch pwned)", "`touch pwned`", "a;touch pwned", "a && b", "a|b", "'", '"', "a'b\"c", "\n", "a\nb",
            "x\0y", "\t", " ", "", "-rf", "--help", "*", "~root", "$HOME", "${IFS}", "a\\", "%s%n", "{}", "{name}",
            "é", "名前", "\u202e", "\ufeff", "../../etc/passwd", "/a/../b", "/a,b", "/x,bus=sata", "a=b:c"]
HUGE = [10**30, 2**64, 2**63, -(2**63), -1, 0, 1e30, -1e30, 2**1100, 10**400, -(2**1100), 1.5, float("inf"),
        float("nan")]  # past 2**1024 an int no longer fits a float
CPULISTS = ["0", "0-71", "71-0", "0-65536", "0-4000000000", "-1", "0,,1", "0-17,36-53", "99", "1-2-3", " 0 ", "٣",
            "0x1", "0-17,18-35", "16-17,52-53"]

scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE), st.floats(allow_nan=True),
    st.text(max_size=30), st.sampled_from(SHELLISH), st.sampled_from(CPULISTS),
    st.binary(max_size=8),  # !!binary
    st.lists(st.integers(min_value=-3, max_value=80), max_size=40),  # pins: duplicates, unknown CPUs, wrong counts
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                     st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3)),
    max_leaves=6)


@st.composite
def mutated_hosts(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            _ = parent[path[-1]]  # still there after earlier mutations?
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(parent, dict | list):  # an earlier mutation made it a string: "abc"[0] reads, never writes
            continue
        action = draw(st.sampled_from(["replace", "replace", "delete", "extra"]))
        if action == "replace":  # half the time something of the same kind: extreme numbers, nasty strings
            like = {int: st.sampled_from(HUGE), str: st.sampled_from(SHELLISH + CPULISTS)}.get(type(parent[path[-1]]))
            parent[path[-1]] = draw(like if like is not None and draw(st.booleans()) else values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.one_of(st.text(max_size=12), st.integers()))] = draw(values)
    return data


def check_task(hosts: Path) -> tuple[int, str, str]:
    """The invoke task `inventory.check` in-process: exit code, stdout, and the Exit message or stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            tasks.check(Context(Config(overrides={"hosts_dir": str(hosts)})))
        except Exit as exc:
            return exc.code, out.getvalue(), str(exc.message)
    return 0, out.getvalue(), err.getvalue()


def fresh_hosts(root: Path, *, defaults: bool = True) -> Path:
    hosts = root / "hosts"
    shutil.rmtree(hosts, ignore_errors=True)
    hosts.mkdir(parents=True)
    if defaults:
        shutil.copy(HOSTS / "defaults.yaml", hosts / "defaults.yaml")
    return hosts


def assert_clean_outcome(code: int, out: str, msg: str, file: Path) -> None:
    assert code in (0, 2), (code, msg)
    if code == 0:
        assert out.startswith(f"hv1: ok ({file}: ")
        return
    lines = msg.splitlines()
    assert lines, "exit 2 says nothing"
    for line in lines:  # one line per problem, each naming its rule and the file
        assert LINE.match(line) and f"] {file}" in line, (line, msg)


@FUZZ
@given(data=mutated_hosts(), defaults=st.booleans())
def test_check_on_mutated_hosts_is_ok_or_exit_2(data: dict[str, Any], defaults: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hosts = fresh_hosts(Path(tmp), defaults=defaults)
        file = hosts / "hv1.yaml"
        file.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        code, out, msg = check_task(hosts)
        event(f"exit {code}")
        assert_clean_outcome(code, out, msg, file)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
       raw=st.binary(max_size=64))
def test_check_on_arbitrary_file_content_is_ok_or_exit_2(text: str, raw: bytes) -> None:
    """Not a hosts file at all: random text (often YAML scalars or syntax errors) and random bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        hosts = fresh_hosts(Path(tmp))
        file = hosts / "hv1.yaml"
        for content in (text.encode(errors="surrogatepass"), raw, b"ssh: {host: h}\nvms: [" + raw + b"]\n"):
            file.write_bytes(content)
            code, out, msg = check_task(hosts)
            assert_clean_outcome(code, out, msg, file)


# Regression cases, each a crash (a traceback instead of exit 2) before the fix in lib/inventory.

def _write(tmp: Path, content: bytes | dict[str, Any]) -> tuple[Path, Path]:
    hosts = fresh_hosts(tmp)
    file = hosts / "hv1.yaml"
    file.write_bytes(content if isinstance(content, bytes) else yaml.safe_dump(content, sort_keys=False).encode())
    return hosts, file


def _errors(tmp: Path, content: bytes | dict[str, Any]) -> list[str]:
    hosts, _ = _write(tmp, content)
    with pytest.raises(InventoryError) as caught:
        load_inventory(hosts)
    return [str(p) for p in caught.value.problems]


def _vm0(change: dict[str, Any], tuning: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    data = with_real_keys(hv1())  # not the spec's placeholder keys: their warnings would be in every list
    data["vms"][0] |= change
    data["vms"][0]["tuning"] |= tuning or {}
    for key in drop:
        del data["vms"][0]["tuning"][key]
    return data


def test_binary_garbage_is_a_yaml_error_naming_the_byte(tmp_path: Path) -> None:
    assert _errors(tmp_path, b"ssh: \x80\x81\n") == [
        f"ERROR [yaml.syntax] {tmp_path}/hosts/hv1.yaml: byte 5: could not parse YAML: unacceptable character "
        "#x0080: invalid leading UTF-8 octet"]


@pytest.mark.parametrize("content", [
    b"vms: " + b"[" * 40 + b"]" * 40 + b"\n",
    b"vms: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",  # libyaml's C composer overflowed its stack (SIGSEGV)
    b"vms: &a [*a]\n",  # recursive alias: infinitely deep
], ids=["40-levels", "100000-levels", "recursive-alias"])
def test_deep_nesting_is_one_error_not_a_crash(tmp_path: Path, content: bytes) -> None:
    assert _errors(tmp_path, content) == [
        f"ERROR [yaml.too-big] {tmp_path}/hosts/hv1.yaml: nested deeper than 32 levels (or a recursive alias); "
        "a hosts file needs only a few"]


def test_billion_laughs_is_refused_before_validation(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9**9 values
    assert _errors(tmp_path, "\n".join(lines).encode()) == [
        f"ERROR [yaml.too-big] {tmp_path}/hosts/hv1.yaml: more than 100000 values once aliases are expanded; a "
        "hosts file needs only a few hundred"]


def test_huge_memory_does_not_overflow_a_float(tmp_path: Path) -> None:
    (error,) = _errors(tmp_path, _vm0({"memory_mb": 2**1100}))
    # hv1 backs VM1 with node 0's hugepages, so the reservation is what it does not fit.
    assert error.startswith(f"ERROR [memory.hugepages] {tmp_path}/hosts/hv1.yaml: hugepages: node 0: VMs backed "
                            f"by hugepages need {2**1100} MB (k3s-worker-slm-heavy {2**1100}), but only 120832 MB")


def test_no_pins_and_an_empty_nodeset_names_the_nodeset(tmp_path: Path) -> None:
    errors = _errors(tmp_path, _vm0({}, {"numa_memory": {"nodeset": "", "mode": "strict"}}, drop=("vcpu_pins",)))
    assert errors[0] == (
        f"ERROR [pins.plan] {tmp_path}/hosts/hv1.yaml: vms[0].tuning.numa_memory.nodeset: k3s-worker-slm-heavy "
        "gives no vcpu_pins and an empty nodeset: nowhere to plan its pins; give a nodeset or the pins")


def test_odd_key_files_are_warnings_not_crashes(tmp_path: Path) -> None:
    binary = tmp_path / "binary.pub"
    binary.write_bytes(b"\xff\xfe\x00")
    files = ["~no-such-user-here/k.pub", "/tmp/a\0b", str(binary)]
    data = with_real_keys(hv1())
    data["vms"][0]["user_configs"][0]["ssh_authorized_key_files"] = files
    hosts, file = _write(tmp_path, data)
    inv = load_inventory(hosts)
    where = f"WARNING [key.file] {file}: vms[0].user_configs[0].ssh_authorized_key_files"
    # /dev/zero, a warning before #26, is refused since: a key file is a small regular file, checked unread.
    data["vms"][0]["user_configs"][0]["ssh_authorized_key_files"] = ["/dev/zero"]
    assert _errors(tmp_path, data) == [f"ERROR [key.file] {file}: vms[0].user_configs[0].ssh_authorized_key_files[0]: "
                                       "/dev/zero is a character device, not a regular file: name a public key "
                                       "file (.pub)"]
    assert [str(w) for w in inv.warnings] == [
        f"{where}[0]: '~no-such-user-here/k.pub': Could not determine home directory; k3s-worker-slm-heavy gets "
        "no key from it",
        f"{where}[1]: '/tmp/a\\x00b': embedded null byte; k3s-worker-slm-heavy gets no key from it",
        f"{where}[2]: '{binary}': 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte; "
        "k3s-worker-slm-heavy gets no key from it",
    ]


def test_a_cpulist_with_a_newline_is_refused_on_one_line(tmp_path: Path) -> None:
    """parse_cpulist strips sysfs's newline; the inventory must not: it reached messages and virt-install."""
    errors = _errors(tmp_path, _vm0({}, {"numa_memory": {"nodeset": "\n", "mode": "strict"}}))
    assert errors == [f"ERROR [cpulist.invalid] {tmp_path}/hosts/hv1.yaml: vms[0].tuning.numa_memory.nodeset: "
                      "'\\n': no spaces or newlines around a cpulist"]


def test_a_key_with_a_newline_stays_on_its_line(tmp_path: Path) -> None:
    data = hv1()
    data["vms"][0]["tuning"]["x\nERROR [fake]"] = 1
    assert _errors(tmp_path, data) == [
        f"ERROR [schema.unknown-key] {tmp_path}/hosts/hv1.yaml: vms[0].tuning['x\\nERROR [fake]']: unknown key "
        "'x\\nERROR [fake]' (known keys: vcpu_pins, emulator_cpuset, numa_memory, hugepages, exclusive_l3_mb)"]


def test_a_comma_in_a_virt_install_path_is_refused(tmp_path: Path) -> None:
    """virt-install reads `path=/a,bus=sata.qcow2` as two sub-options and has no escape for a comma."""
    errors = _errors(tmp_path, _vm0({"disk_path": "/var/lib/libvirt/images/x,bus=sata.qcow2"}))
    assert errors == [f"ERROR [path.comma] {tmp_path}/hosts/hv1.yaml: vms[0].disk_path: "
                      "'/var/lib/libvirt/images/x,bus=sata.qcow2' contains ',', which virt-install would read as "
                      "the start of another disk or boot option"]


# The real CLI, on a handful of nasty files at once and one by one.

def cli(hosts: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, INVOKE_HOSTS_DIR=str(hosts))
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), "inventory.check", *args],
                          check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


NASTY: dict[str, bytes | dict[str, Any]] = {
    "syntax": b"vms: [\n  - {name: a\n",
    "scalar": b"42\n",
    "list": b"- a\n- b\n",
    "garbage": bytes(range(256)),
    "utf16": "ssh: {host: h}\n".encode("utf-16"),
    "deep": b"vms: " + b"[" * 50_000 + b"]" * 50_000 + b"\n",
    "laughs": b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n".encode() for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    "shell": _vm0({"name": "$(reboot)", "disk_path": "/x;rm -rf /", "bridge_network_interface": "br0`id`"},
                  {"emulator_cpuset": "0-4000000000"}) | {"sysroot": "/a\nb", "libvirt_uri": "q'\"\0"},
    "numbers": _vm0({"vcpu_count": 2**64, "memory_mb": -1, "disk_size_gb": 1e30}, {"vcpu_pins": [2**64, -1, "x"]}),
    "types": {"ssh": [], "bridge": {"a": 1}, "topology": "big", "k3s": None, "vms": [None, 1, "vm", []]},
}


def test_cli_on_many_nasty_files_at_once(tmp_path: Path) -> None:
    hosts = fresh_hosts(tmp_path)
    for name, content in NASTY.items():
        (hosts / f"{name}.yaml").write_bytes(
            content if isinstance(content, bytes) else yaml.safe_dump(content, allow_unicode=True).encode())
    out = cli(hosts)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    for name in NASTY:  # every file is named: one bad file does not hide another's problems
        assert f"{hosts}/{name}.yaml" in out.stderr, name
    assert all(LINE.match(line) for line in out.stderr.splitlines()), out.stderr


@pytest.mark.parametrize(("content", "code", "expect"), [
    (b"vms: [\n", 2, "[yaml.syntax]"),
    (b"- just\n- a list\n", 2, "[yaml.not-mapping]"),
    (b"\x00\xff\xfe garbage \x80\x81", 2, "[yaml.syntax]"),
    (b"ssh: {host: h}\nvms: " + b"[" * 50_000 + b"]" * 50_000, 2, "[yaml.too-big]"),
    # (a missing key file: /dev/zero there was a warning before #26, refused since)
    (yaml.safe_dump(_vm0({"user_configs": [{"username": "admin", "ssh_authorized_key_files": ["/no/such.pub"]}]}))
     .encode(), 0, "hv1: ok"),
], ids=["syntax", "not-mapping", "binary", "deep", "ok-with-a-warning"])
def test_cli_exit_code_and_no_traceback(tmp_path: Path, content: bytes, code: int, expect: str) -> None:
    hosts, _ = _write(tmp_path, content)
    out = cli(hosts, "--host=hv1")
    assert out.returncode == code, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert expect in out.stdout + out.stderr


# -- 2. sh() quotes every value -----------------------------------------------------------------------

NO_NUL = st.characters(blacklist_characters="\0", blacklist_categories=["Cs"])
words: st.SearchStrategy[Value] = st.one_of(
    st.text(alphabet=NO_NUL, max_size=40),
    st.sampled_from([s for s in SHELLISH if "\0" not in s]),
    st.from_regex(r"-{1,2}[a-z]*", fullmatch=True),  # leading dashes stay one word (no option parsing here)
    st.integers(),
    st.builds(PurePosixPath, st.text(alphabet=NO_NUL, max_size=20)),
)
TEMPLATE = "printf '%s\\0' {a} {b} {rest}"


def argv_from_shell(command: str, shell: str = "sh") -> list[str]:
    """The argv a real shell hands printf; run in a scratch directory that must stay empty."""
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run([shell, "-c", command], capture_output=True, check=False, timeout=30, cwd=scratch).stdout
        assert not os.listdir(scratch), "the command wrote files: a value ran as shell code"
    assert out.endswith(b"\0")
    return out[:-1].decode().split("\0")


@settings(max_examples=EXAMPLES, deadline=None)
@given(a=words, b=words, rest=st.lists(words, max_size=3))
def test_a_real_shell_parses_exactly_the_values(a: Value, b: Value, rest: list[Value]) -> None:
    cmd = sh(TEMPLATE, a=a, b=b, rest=rest)
    want = [str(v) for v in (a, b, *rest)]
    assert shlex.split(cmd.real) == ["printf", "%s\\0", *want]
    assert argv_from_shell(cmd.real) == want
    # As remote.py runs it for a non-root user: the whole line quoted once more for sudo's sh -c.
    assert argv_from_shell(f"sh -c {shlex.quote(cmd.real)}", "bash") == want


@contextlib.contextmanager
def forgetting_secrets() -> Iterator[None]:
    """Every Secret is remembered for masking for the life of the process; a generated one such as
    "a" or "0" would then mask that text in every later test's output. Forget the ones made here."""
    before = set(shell._known)
    try:
        yield
    finally:
        with shell._known_lock:
            shell._known.intersection_update(before)


@settings(max_examples=100, deadline=None)
@given(plain=words, secret=st.text(alphabet=NO_NUL, min_size=1, max_size=30))
def test_secrets_show_as_stars_but_reach_the_shell_quoted(plain: Value, secret: str) -> None:
    with forgetting_secrets():
        cmd = sh("printf '%s\\0' {plain} {token}", plain=plain, token=Secret(secret))
        assert cmd.shown == f"printf '%s\\0' {shlex.quote(str(plain))} ***"
        assert str(cmd) == cmd.shown and "real=" not in repr(cmd)
        assert argv_from_shell(cmd.real) == [str(plain), secret]


@settings(max_examples=50, deadline=None)
@given(before=st.text(alphabet=NO_NUL, max_size=10), after=st.text(alphabet=NO_NUL, max_size=10),
       how=st.sampled_from(["plain", "list", "secret", "path"]))
def test_a_nul_byte_is_refused_by_name(before: str, after: str, how: str) -> None:
    bad = before + "\0" + after
    with forgetting_secrets():
        choices: dict[str, Value | list[Value]] = {"plain": bad, "list": ["ok", bad], "secret": Secret(bad),
                                                   "path": PurePosixPath("/x", bad)}
        value = choices[how]
        with pytest.raises(ValueError, match=r"^sh\(\): the value for \{v\} contains a NUL byte") as caught:
            sh("echo {ok} {v}", ok="fine", v=value)
        assert how != "secret" or bad not in str(caught.value)


# -- 3. inventory values in the offline plan stay whole -------------------------------------------------

SAFE_SEGMENT = r"[A-Za-z0-9._:@+=,%~-]{1,10}"  # model._SAFE without '/'
segments = st.from_regex(SAFE_SEGMENT, fullmatch=True).filter(lambda s: s not in (".", ".."))
# Under the storage root the generated hosts name (#26: the tool's files live only under one).
ROOT = "/srv"
abs_paths = st.lists(segments, min_size=1, max_size=3).map(lambda parts: ROOT + "/" + "/".join(parts))
vm_names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?", fullmatch=True)
ifaces = st.from_regex(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}", fullmatch=True)  # no leading '-' (an option)
users = st.from_regex(r"[a-z_][a-z0-9_-]{0,12}", fullmatch=True)
# A local libvirt URI (a remote one is refused) whose path carries every shell-safe character.
uris = st.from_regex(r"[A-Za-z0-9._/:@+=,%~-]{0,20}", fullmatch=True).map(lambda q: "qemu:///" + q)
PROVISION = load_runbook(REPO / "runbooks" / "provision.yaml", REGISTRY)


@st.composite
def valid_hosts(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """Two VMs on the spec topology with generated names, paths, bridge, users and libvirt URI."""
    names = draw(st.lists(vm_names, min_size=2, max_size=2, unique=True))
    paths = draw(st.lists(abs_paths, min_size=8, max_size=8, unique=True))
    vms = []
    for i, name in enumerate(names):
        disk, iso, hot, mount = paths[4 * i: 4 * i + 4]
        vms.append({
            "name": name, "vcpu_count": 2, "memory_mb": 2048, "disk_path": disk, "disk_size_gb": 10,
            "base_image_path": draw(abs_paths.filter(lambda p: p not in paths)),
            "bridge_network_interface": draw(ifaces), "cloud_init_iso_path": iso,
            "tuning": {"vcpu_pins": [i + 1, i + 37], "emulator_cpuset": "16-17,52-53",
                       "numa_memory": {"nodeset": "0", "mode": "strict"}},
            "user_configs": [{"username": draw(users), "ssh_authorized_keys": [REAL_KEY]}],
            "disks": [{"name": "hot", "tier": "ssd", "path": hot, "size_gb": 5, "target": "vdb", "mount": mount,
                       "directories": ["clean"]}],
            "ssh": {"host": f"10.0.0.{i + 10}"},
            "k8s": {"role": "server" if i == 0 else "agent"},
        })
    data: dict[str, Any] = {"ssh": {"host": "hv.example"}, "bridge": draw(ifaces), "libvirt_uri": draw(uris),
            "storage_roots": [ROOT], "topology": SPEC_TOPOLOGY, "k3s": {"version": "v1.31.4+k3s1"}, "vms": vms}
    values: list[str] = [*names, *paths, *(str(vm["base_image_path"]) for vm in vms),
                         *(str(vm["bridge_network_interface"]) for vm in vms), data["libvirt_uri"]]
    return data, values


def offline_plan(loaded: LoadedHost) -> list[Command]:
    """What `invoke plan --offline` renders: each step's plan(target, None), the commands only."""
    return [action for step in PROVISION.steps for target in targets_for(step, loaded)
            for action in step.plan(target, None).actions if isinstance(action, Command)]


def virtinst_suboptions(value: str) -> dict[str, str]:
    """virt-install's reading of a --disk value: comma-separated name=value parts, no escape for a comma.

    (virt-install 9 answers `path=/a,b.qcow2` with "Unknown --disk options: ['b.qcow2']" and takes
    `path=/a,bus=sata` as two sub-options; a part without '=' is kept here under "?".)
    """
    opts: dict[str, str] = {}
    for part in value.split(","):
        key, eq, val = part.partition("=")
        opts[key if eq else "?"] = val if eq else part
    return opts


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated=valid_hosts())
def test_inventory_values_stay_one_token_in_the_offline_plan(generated: tuple[dict[str, Any], list[str]]) -> None:
    data, values = generated
    with tempfile.TemporaryDirectory() as tmp:
        hosts = fresh_hosts(Path(tmp))
        (hosts / "hv1.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            loaded = load_inventory(hosts).hosts["hv1"]
        except InventoryError as exc:
            # Only the comma rule may refuse these: everything else is within the schema's character sets.
            # (path.nested: one generated path can be a directory of another.)
            assert {p.rule for p in exc.problems} <= {"path.comma", "disk.duplicate", "disk.base-image",
                                                      "path.nested"}, exc
            event("refused: " + ",".join(sorted({p.rule for p in exc.problems})))
            return
    commands = offline_plan(loaded)
    assert commands
    seen = set()
    for cmd in commands:
        tokens = shlex.split(cmd.shown)
        for value in values:
            if value not in cmd.shown:
                continue
            seen.add(value)
            holders = [t for t in tokens if value in t]
            assert holders, (value, cmd.shown)  # split by the shell: a value became several words
            for token in holders:  # quoted twice, as inside "..." in a template: the quotes stay literal
                # ...except inside "$(...)": a command substitution starts a quoting context of its own,
                # so '~' in "$(virsh -c '~' domstate x)" is quoted once, as it must be.
                outside = re.sub(r"\$\([^()]*\)", "", token)
                assert f"'{value}'" not in outside and f'"{value}"' not in outside, (value, token)
            if value in tokens and shlex.quote(value) != value:
                # A word of its own that needs quoting (a '~' the shell would expand) is quoted in the line.
                assert shlex.quote(value) in cmd.shown, (value, cmd.shown)
        if "virt-install" in tokens:  # and virt-install reads each disk's source path back whole
            vm = next(vm for vm in loaded.host.vms if vm.name == tokens[tokens.index("--name") + 1])
            # the disks are --xml XPATH=VALUE edits (no pool lookup); each is read like any sub-option
            got = [virtinst_suboptions(tokens[i + 1]) for i, t in enumerate(tokens)
                   if t == "--xml" and "/source/@" in tokens[i + 1]]
            assert [next(iter(d.values())) for d in got] == [vm.disk_path, *(d.path for d in vm.disks),
                                                             vm.cloud_init_iso_path]
            assert all("?" not in d and len(d) == 1 for d in got), got
    assert {vm.name for vm in loaded.host.vms} <= seen  # the plan really carried the generated values
