"""Tests of the test harness itself: the fake sysfs must look like the kernel's, the sshd hosts real."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness import sysfs
from tests.harness.sshd import SshdFarm, SshHost, count_auths, descendants, fabric_connection, paramiko_client
from tests.harness.sysfs import CPU_DIR, HostShape, kernel_bracket, write_tree

MakeSysroot = Callable[[HostShape], Path]
CPU = "sys/devices/system/cpu"
NODE = "sys/devices/system/node"


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text()


def cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in text.split("\n\n"):
        if chunk.strip():
            pairs = (line.split(":", 1) for line in chunk.splitlines())
            blocks.append({k.strip(): v.strip() for k, v in pairs})
    return blocks


def cpu_dirs(root: Path) -> list[str]:
    return [p.name for p in (root / CPU).iterdir() if CPU_DIR.match(p.name)]


# --- the spec host --------------------------------------------------------------------------------


def test_spec_numa_nodes(spec_sysroot: Path) -> None:
    assert read(spec_sysroot, f"{NODE}/node0/cpulist") == "0-17,36-53\n"
    assert read(spec_sysroot, f"{NODE}/node1/cpulist") == "18-35,54-71\n"
    assert read(spec_sysroot, f"{NODE}/node0/cpumap") == "00,003ffff0,0003ffff\n"
    assert read(spec_sysroot, f"{NODE}/online") == "0-1\n"
    assert read(spec_sysroot, f"{NODE}/node0/distance") == "10 21\n"
    assert read(spec_sysroot, f"{NODE}/node1/distance") == "21 10\n"
    meminfo = read(spec_sysroot, f"{NODE}/node1/meminfo")
    assert meminfo.startswith("Node 1 MemTotal:       134217728 kB\nNode 1 MemFree:  ")
    assert "Node 1 HugePages_Total:     0\n" in meminfo
    assert read(spec_sysroot, f"{NODE}/node0/numastat").splitlines()[0].startswith("numa_hit ")
    assert read(spec_sysroot, "proc/meminfo").startswith("MemTotal:       268435456 kB\n")


def test_spec_cpu_topology(spec_sysroot: Path) -> None:
    assert len(cpu_dirs(spec_sysroot)) == 72
    assert (spec_sysroot / CPU / "cpufreq").is_dir()  # the kernel's decoy next to cpuN
    for rel in ("online", "possible", "present"):
        assert read(spec_sysroot, f"{CPU}/{rel}") == "0-71\n"
    topo = f"{CPU}/cpu0/topology"
    assert read(spec_sysroot, f"{topo}/thread_siblings_list") == "0,36\n"
    assert read(spec_sysroot, f"{topo}/core_cpus_list") == "0,36\n"
    assert read(spec_sysroot, f"{topo}/core_siblings_list") == "0-17,36-53\n"
    assert read(spec_sysroot, f"{CPU}/cpu36/topology/thread_siblings_list") == "0,36\n"
    assert read(spec_sysroot, f"{CPU}/cpu54/topology/physical_package_id") == "1\n"
    assert read(spec_sysroot, f"{CPU}/cpu54/topology/core_id") == "0\n"
    assert read(spec_sysroot, f"{CPU}/smt/active") == "1\n"
    assert read(spec_sysroot, f"{CPU}/smt/control") == "on\n"
    assert read(spec_sysroot, f"{CPU}/cpu5/cpufreq/scaling_governor") == "powersave\n"
    assert (spec_sysroot / CPU / "cpu5/node0").resolve() == (spec_sysroot / NODE / "node0").resolve()


def test_spec_l3_is_index3_and_only_level3(spec_sysroot: Path) -> None:
    cache = spec_sysroot / CPU / "cpu19/cache"
    levels = {p.name: (p / "level").read_text() for p in cache.iterdir()}
    assert levels == {"index0": "1\n", "index1": "1\n", "index2": "2\n", "index3": "3\n"}
    assert read(cache, "index3/size") == "46080K\n"
    assert read(cache, "index3/type") == "Unified\n"
    assert read(cache, "index3/shared_cpu_list") == "18-35,54-71\n"
    assert read(cache, "index0/shared_cpu_list") == "19,55\n"


def test_spec_cpuinfo(spec_sysroot: Path) -> None:
    text = read(spec_sysroot, "proc/cpuinfo")
    assert text.endswith("power management:\n\n")
    blocks = cpuinfo_blocks(text)
    assert [int(b["processor"]) for b in blocks] == list(range(72))
    assert all("vmx" in b["flags"].split() for b in blocks)
    assert {b["siblings"] for b in blocks} == {"36"} and {b["cpu cores"] for b in blocks} == {"18"}
    assert blocks[36]["core id"] == "0" and blocks[36]["physical id"] == "0"
    assert blocks[54]["physical id"] == "1"
    assert blocks[0]["cache size"] == "46080 KB"
    assert len({b["apicid"] for b in blocks}) == 72
    assert (spec_sysroot / "dev/kvm").is_file()
    assert "intel_iommu=on" in read(spec_sysroot, "proc/cmdline")
    assert (spec_sysroot / "sys/class/iommu/dmar0").is_dir()


def test_spec_misc(spec_sysroot: Path) -> None:
    assert read(spec_sysroot, "sys/kernel/mm/transparent_hugepage/enabled") == "always [madvise] never\n"
    assert read(spec_sysroot, "sys/kernel/mm/transparent_hugepage/defrag") == (
        "always defer defer+madvise [madvise] never\n")
    assert read(spec_sysroot, "proc/sys/kernel/numa_balancing") == "1\n"
    assert read(spec_sysroot, "proc/sys/vm/nr_hugepages") == "0\n"
    assert read(spec_sysroot, "sys/class/dmi/id/product_name") == "PowerEdge R730\n"


def test_every_file_ends_in_newline(spec_sysroot: Path) -> None:
    files = [p for p in spec_sysroot.rglob("*") if p.is_file() and not p.is_symlink() and p.name != "kvm"]
    assert len(files) > 2000
    assert [p for p in files if not p.read_text().endswith("\n")] == []


# --- other shapes ---------------------------------------------------------------------------------


def test_smt_not_supported(make_sysroot: MakeSysroot) -> None:
    root = make_sysroot(HostShape(threads_per_core=1))
    assert len(cpu_dirs(root)) == 36
    assert read(root, f"{CPU}/smt/active") == "0\n"
    assert read(root, f"{CPU}/smt/control") == "notsupported\n"
    assert read(root, f"{CPU}/cpu0/topology/thread_siblings_list") == "0\n"
    assert read(root, f"{NODE}/node0/cpulist") == "0-17\n"
    assert read(root, f"{NODE}/node1/cpumap") == "f,fffc0000\n"
    assert len(cpuinfo_blocks(read(root, "proc/cpuinfo"))) == 36


def test_smt_turned_off_keeps_siblings_offline(make_sysroot: MakeSysroot) -> None:
    root = make_sysroot(HostShape(smt_active=False))
    assert read(root, f"{CPU}/smt/control") == "off\n"
    assert read(root, f"{CPU}/smt/active") == "0\n"
    assert read(root, f"{CPU}/online") == "0-35\n"
    assert read(root, f"{CPU}/offline") == "36-71\n"
    assert read(root, f"{CPU}/present") == "0-71\n"
    assert read(root, f"{CPU}/cpu36/online") == "0\n"
    assert not (root / CPU / "cpu36/topology").exists()  # as the kernel removes it
    assert read(root, f"{CPU}/cpu0/topology/thread_siblings_list") == "0\n"
    assert read(root, f"{NODE}/node0/cpulist") == "0-17\n"


def test_dropped_node(make_sysroot: MakeSysroot) -> None:
    root = make_sysroot(HostShape(drop_nodes=(1,)))
    assert not (root / NODE / "node1").exists()
    assert read(root, f"{NODE}/online") == "0\n"
    assert read(root, f"{NODE}/possible") == "0-1\n"
    assert read(root, f"{NODE}/node0/distance") == "10\n"
    assert len(cpu_dirs(root)) == 72  # the CPUs are still there, just in no node
    assert not list((root / CPU / "cpu18").glob("node*"))
    assert read(root, "proc/meminfo").startswith("MemTotal:       134217728 kB\n")


def test_node_cpus_override(make_sysroot: MakeSysroot) -> None:
    root = make_sysroot(HostShape(node_cpus_override={1: "18-30,54-66"}))
    assert read(root, f"{NODE}/node1/cpulist") == "18-30,54-66\n"
    assert read(root, f"{NODE}/node0/cpulist") == "0-17,36-53\n"
    assert read(root, f"{CPU}/online") == "0-30,36-66\n"
    assert not (root / CPU / "cpu31").exists()
    assert read(root, f"{CPU}/cpu18/cache/index3/shared_cpu_list") == "18-30,54-66\n"
    blocks = cpuinfo_blocks(read(root, "proc/cpuinfo"))
    assert len(blocks) == 62
    assert {(b["siblings"], b["cpu cores"]) for b in blocks if b["physical id"] == "1"} == {("26", "13")}


def test_no_virtualization_flag(make_sysroot: MakeSysroot) -> None:
    root = make_sysroot(HostShape(vendor_flag=None, iommu=False, cpufreq=False))
    text = read(root, "proc/cpuinfo")
    assert not re.search(r"\b(vmx|svm)\b", text)
    assert not (root / "dev/kvm").exists()
    assert not (root / "sys/class/iommu").exists()
    assert "iommu" not in read(root, "proc/cmdline")
    assert not (root / CPU / "cpu0/cpufreq").exists()


def test_amd_shape(make_sysroot: MakeSysroot) -> None:
    root = make_sysroot(HostShape(vendor_flag="svm", nodes=4))
    blocks = cpuinfo_blocks(read(root, "proc/cpuinfo"))
    assert blocks[0]["vendor_id"] == "AuthenticAMD" and "svm" in blocks[0]["flags"].split()
    assert "vmx" not in read(root, "proc/cpuinfo")
    assert (root / "sys/class/iommu/ivhd0").is_dir()
    assert read(root, f"{NODE}/node0/cpulist") == "0-8,36-44\n"  # sub-NUMA: 4 nodes on 2 sockets
    assert read(root, f"{NODE}/node0/distance") == "10 11 21 21\n"


def test_shape_validation() -> None:
    with pytest.raises(ValueError, match="out of range"):
        HostShape(drop_nodes=(2,))
    with pytest.raises(ValueError, match="vendor_flag"):
        HostShape(vendor_flag="vt-x")
    with pytest.raises(ValueError, match="node 0 and node 1"):
        sysfs.layout(HostShape(node_cpus_override={1: "0-3"}))
    with pytest.raises(ValueError, match="not one of"):
        kernel_bracket(["always", "never"], "madvise")


@settings(max_examples=25, deadline=None)
@given(
    sockets=st.integers(1, 4), cores=st.integers(1, 6), threads=st.integers(1, 2),
    nodes_per_socket=st.sampled_from([1, 2]), smt=st.sampled_from([None, False]),
)
def test_layout_invariants(sockets: int, cores: int, threads: int, nodes_per_socket: int,
                           smt: bool | None) -> None:
    shape = HostShape(sockets=sockets, cores_per_socket=cores, threads_per_core=threads,
                      nodes=min(sockets * nodes_per_socket, sockets * cores), smt_active=smt)
    with tempfile.TemporaryDirectory(dir=sysfs.fast_tmp_dir()) as tmp:
        root = write_tree(Path(tmp), shape)
        online = sysfs.parse_cpulist(read(root, f"{CPU}/online"))
        node_lists = [sysfs.parse_cpulist(read(root, f"{NODE}/node{n}/cpulist")) for n in range(shape.node_count)]
        assert sorted(c for ids in node_lists for c in ids) == online  # a partition of the online CPUs
        assert len(cpuinfo_blocks(read(root, "proc/cpuinfo"))) == len(online)
        for cpu in online:
            siblings = sysfs.parse_cpulist(read(root, f"{CPU}/cpu{cpu}/topology/thread_siblings_list"))
            assert cpu in siblings and len(siblings) == (threads if smt is None else 1)


@given(st.sets(st.integers(0, 300)))
def test_cpulist_round_trip(ids: set[int]) -> None:
    assert sysfs.parse_cpulist(sysfs.format_cpulist(ids)) == sorted(ids)


# --- formats checked against this machine's real files --------------------------------------------


def real(path: str) -> str:
    p = Path(path)
    if not p.exists():
        pytest.skip(f"{path} not on this machine")
    return p.read_text()


def test_real_cpulists_and_masks_match_our_format() -> None:
    for path in (f"/{NODE}/node0/cpulist", f"/{CPU}/online", f"/{CPU}/possible",
                 f"/{CPU}/cpu0/topology/thread_siblings_list", f"/{CPU}/cpu0/cache/index3/shared_cpu_list"):
        text = real(path)
        assert sysfs.format_cpulist(sysfs.parse_cpulist(text)) + "\n" == text, path
    nbits = max(sysfs.parse_cpulist(real(f"/{CPU}/possible"))) + 1
    for lst, mask in ((f"/{NODE}/node0/cpulist", f"/{NODE}/node0/cpumap"),
                      (f"/{CPU}/cpu0/topology/core_siblings_list", f"/{CPU}/cpu0/topology/core_siblings")):
        ids = sysfs.parse_cpulist(real(lst))
        assert sysfs.format_cpumask(ids, nbits) + "\n" == real(mask), mask
    assert re.fullmatch(r"\d+K\n", real(f"/{CPU}/cpu0/cache/index3/size"))
    assert real(f"/{CPU}/cpu0/cache/index3/level") == "3\n"
    assert real(f"/{CPU}/smt/control").strip() in {"on", "off", "forceoff", "notsupported", "notimplemented"}


def test_real_node_meminfo_numastat_distance_match_our_format(spec_sysroot: Path) -> None:
    keys = []
    for line in real(f"/{NODE}/node0/meminfo").splitlines():
        m = re.fullmatch(r"Node (\d+) (\S+):\s+(\d+)( kB)?", line)
        assert m, line
        keys.append(m[2])
        assert sysfs.node_meminfo_line(int(m[1]), m[2], int(m[3])) == line
    ours = [line.split()[2].rstrip(":") for line in read(spec_sysroot, f"{NODE}/node0/meminfo").splitlines()]
    assert set(ours) <= set(keys)
    real_stat = [line.split()[0] for line in real(f"/{NODE}/node0/numastat").splitlines()]
    our_stat = [line.split()[0] for line in read(spec_sysroot, f"{NODE}/node0/numastat").splitlines()]
    assert our_stat == real_stat[: len(our_stat)]
    assert re.fullmatch(r"\d+( \d+)*\n", real(f"/{NODE}/node0/distance"))


def test_real_proc_meminfo_matches_our_format(spec_sysroot: Path) -> None:
    real_keys = []
    for line in real("/proc/meminfo").splitlines():
        key, value = line.split(":", 1)
        real_keys.append(key)
        assert sysfs.meminfo_line(key, int(value.split()[0]), kb=value.endswith(" kB")) == line
    ours = [line.split(":")[0] for line in read(spec_sysroot, "proc/meminfo").splitlines()]
    assert set(ours) <= set(real_keys)


def test_real_cpuinfo_matches_our_format(spec_sysroot: Path) -> None:
    text = real("/proc/cpuinfo")
    assert text.endswith("\n\n")
    real_keys: set[str] = set()
    for line in text.splitlines():
        if "\t" in line:  # every "key<tabs>: value" line, as the kernel aligns it
            key = line.partition("\t")[0]
            value = line.partition(":")[2].removeprefix(" ")
            real_keys.add(key)
            assert sysfs.cpuinfo_line(key, value) == line
    ours = set(cpuinfo_blocks(read(spec_sysroot, "proc/cpuinfo"))[0])
    assert {"processor", "physical id", "core id", "flags", "siblings", "cpu cores"} <= real_keys
    assert ours - {"vmx flags", "power management"} <= real_keys  # "vmx flags" only on Intel hosts


def test_real_thp_matches_kernel_bracket() -> None:
    for name, choices in (("enabled", sysfs.THP_ENABLED_CHOICES), ("defrag", sysfs.THP_DEFRAG_CHOICES)):
        text = real(f"/sys/kernel/mm/transparent_hugepage/{name}")
        current = re.search(r"\[(.+?)\]", text)
        assert current
        assert kernel_bracket(choices, current[1]) + "\n" == text


# --- HOME isolation -------------------------------------------------------------------------------


def test_home_is_isolated(isolated_home: Path) -> None:
    assert os.path.expanduser("~/.ssh/config") == str(isolated_home / ".ssh/config")
    assert "SSH_AUTH_SOCK" not in os.environ


def test_fabric_reads_ssh_config_from_isolated_home(isolated_home: Path) -> None:
    import fabric

    (isolated_home / ".ssh").mkdir()
    (isolated_home / ".ssh/config").write_text("Host sentinel\n    Port 2222\n    User nobody\n")
    conn = fabric.Connection("sentinel")
    assert (conn.port, conn.user) == (2222, "nobody")  # fabric expands ~ when the Config is built


# --- sshd hosts -----------------------------------------------------------------------------------


def run(client: paramiko.SSHClient, command: str) -> str:
    _, out, _ = client.exec_command(command)
    return out.read().decode()


def test_two_hosts_over_paramiko_and_fabric(sshd_farm: SshdFarm) -> None:
    a, b = sshd_farm.start("a"), sshd_farm.start("b")
    try:
        assert a.port != b.port and a.pid != b.pid
        assert f"[127.0.0.1]:{a.port} ssh-ed25519 " in a.known_hosts.read_text()
        assert f"[127.0.0.1]:{b.port} ssh-ed25519 " in a.known_hosts.read_text()
        for host in (a, b):
            before = count_auths(host)
            client = paramiko_client(host)
            try:
                assert run(client, "echo hi") == "hi\n"
            finally:
                client.close()
            assert count_auths(host) == before + 1
            conn = fabric_connection(host)
            try:
                assert conn.run("echo hi", hide=True).stdout == "hi\n"
            finally:
                conn.close()
            assert count_auths(host) == before + 2
    finally:
        sshd_farm.stop("a")
        sshd_farm.stop("b")
    assert f":{a.port} " not in a.known_hosts.read_text()


def test_host_keys_are_really_checked(sshd_farm: SshdFarm, tmp_path: Path) -> None:
    a, b = sshd_farm.start("ka"), sshd_farm.start("kb")
    try:
        b_key = next(line for line in b.known_hosts.read_text().splitlines() if f":{b.port} " in line)
        wrong = tmp_path / "wrong_known_hosts"
        wrong.write_text(b_key.replace(f":{b.port} ", f":{a.port} ") + "\n")  # b's key claimed for a
        with pytest.raises(paramiko.BadHostKeyException):
            paramiko_client(dataclasses.replace(a, known_hosts=wrong))
        conn = fabric_connection(dataclasses.replace(a, known_hosts=wrong))
        with pytest.raises(paramiko.BadHostKeyException):
            conn.run("true", hide=True)
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
            paramiko_client(dataclasses.replace(a, known_hosts=empty))
        with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):  # not AutoAdd
            fabric_connection(dataclasses.replace(a, known_hosts=empty)).run("true", hide=True)
    finally:
        sshd_farm.stop("ka")
        sshd_farm.stop("kb")


def test_ssh_host_fixture_carries_sysroot(ssh_host: SshHost) -> None:
    assert ssh_host.sysroot is not None
    client = paramiko_client(ssh_host)
    try:
        assert run(client, f"cat {ssh_host.sysroot}/{NODE}/node1/cpulist") == "18-35,54-71\n"
        assert run(client, "echo $SHLVL") == "2\n"  # SetEnv SHLVL=1, +1 by the remote bash
    finally:
        client.close()


def test_stop_all_leaves_no_process(tmp_path: Path) -> None:
    farm = SshdFarm(tmp_path / "farm")
    hosts = [farm.start("x"), farm.start("y")]
    client = paramiko_client(hosts[0])
    client.exec_command("sleep 60")  # a live session: sshd children and a grandchild to clean up
    deadline = time.monotonic() + 5
    while len(descendants(hosts[0].pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = [h.pid for h in hosts] + descendants(hosts[0].pid)
    assert len(pids) >= 4
    farm.stop_all()
    client.close()
    assert farm.hosts == {} and hosts[0].known_hosts.read_text() == ""
    for pid in pids:
        # Under load a child may die after its parent: an orphaned zombie then waits for PID 1, which
        # here reaps every ~2 s. Wait for that (a condition, bounded), then it must be gone.
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    with SshdFarm(tmp_path / "farm") as farm:
        with pytest.raises(RuntimeError, match="Bad configuration option"):
            farm.start("bad", extra_config=["NoSuchOption yes"])
        assert farm.hosts == {}
