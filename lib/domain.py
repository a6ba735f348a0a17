"""libvirt domains (pure): the virt-install command for a VM, and domain XML parsed back for checks.

Configured pins are read from `virsh dumpxml --inactive`: the API's vcpupin/emulatorpin readers cut
cpusets to the CPUs of the host they run on (ENVIRONMENT.md), the XML keeps every pin as written.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from lib.cpuset import format_cpulist, parse_cpulist
from lib.inventory.model import VM
from lib.results import Check
from lib.vmperf import Cachetune, DomainTuning, GuestTopology


@dataclass(frozen=True)
class DomainDisk:
    device: str  # disk or cdrom
    source: str
    target: str
    # <driver> attributes ("" when absent): host cache, AIO mode, discard, I/O thread id.
    cache: str = ""
    io: str = ""
    discard: str = ""
    iothread: str = ""


@dataclass(frozen=True)
class DomainSpec:
    """What a domain definition says, in the terms the inventory uses."""

    name: str
    virt_type: str
    vcpus: int
    memory_mb: int
    vcpu_pins: dict[int, frozenset[int]]
    emulator_cpus: frozenset[int]
    numa_mode: str
    numa_nodes: frozenset[int]
    disks: tuple[DomainDisk, ...]
    topology: GuestTopology | None = None
    cpu_mode: str = ""
    cpu_model: str = ""
    cache_mode: str = ""
    nosharepages: bool = False
    locked: bool = False
    hugepage_kb: tuple[int, ...] = ()
    memballoon: str = ""  # model, "none", or "" when there is no <memballoon> element
    iothreads: int = 0
    iothread_pins: dict[int, frozenset[int]] | None = None
    cachetunes: tuple[Cachetune, ...] = ()


_UNITS = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "b": 1 / 1024 / 1024, "bytes": 1 / 1024 / 1024}


def parse_domain_xml(text: str) -> DomainSpec:
    # The XML comes from libvirtd on the operator's own hypervisor, not from an untrusted party.
    root = ET.fromstring(text)  # noqa: S314
    memory = root.find("memory")
    mem_mb = int(int(memory.text or 0) * _UNITS.get(memory.get("unit", "KiB"), 1 / 1024)) if memory is not None else 0
    pins = {int(p.get("vcpu", "-1")): parse_cpulist(p.get("cpuset", "")) for p in root.iterfind("cputune/vcpupin")}
    emulator = root.find("cputune/emulatorpin")
    numa = root.find("numatune/memory")
    disks = tuple(_disk(d) for d in root.iterfind("devices/disk"))
    vcpu = root.find("vcpu")
    topo = root.find("cpu/topology")
    backing = root.find("memoryBacking")
    balloon = root.find("devices/memballoon")
    return DomainSpec(
        name=root.findtext("name", ""), virt_type=root.get("type", ""), vcpus=int(vcpu.text or 0) if vcpu is not None
        else 0, memory_mb=mem_mb, vcpu_pins=pins,
        emulator_cpus=parse_cpulist(emulator.get("cpuset", "")) if emulator is not None else frozenset(),
        numa_mode=numa.get("mode", "") if numa is not None else "",
        numa_nodes=parse_cpulist(numa.get("nodeset", "")) if numa is not None else frozenset(),
        disks=disks,
        topology=GuestTopology(int(topo.get("sockets", 0)), int(topo.get("cores", 0)), int(topo.get("threads", 0)))
        if topo is not None else None,
        cpu_mode=_attr(root, "cpu", "mode"), cpu_model=root.findtext("cpu/model", "") or "",
        cache_mode=_attr(root, "cpu/cache", "mode"),
        nosharepages=backing is not None and backing.find("nosharepages") is not None,
        locked=backing is not None and backing.find("locked") is not None,
        hugepage_kb=tuple(_kib(p) for p in root.iterfind("memoryBacking/hugepages/page")),
        memballoon=balloon.get("model", "") if balloon is not None else "",
        iothreads=int(root.findtext("iothreads", "0") or 0),
        iothread_pins={int(p.get("iothread", "0")): parse_cpulist(p.get("cpuset", ""))
                       for p in root.iterfind("cputune/iothreadpin")},
        cachetunes=tuple(_cachetune(c) for c in root.iterfind("cputune/cachetune")))


def _attr(root: ET.Element, path: str, name: str) -> str:
    elem = root.find(path)
    return elem.get(name, "") if elem is not None else ""


def _kib(elem: ET.Element) -> int:
    return int(int(elem.get("size", "0")) * _UNITS.get(elem.get("unit", "KiB"), 1 / 1024) * 1024)


def _cachetune(elem: ET.Element) -> Cachetune:
    cache = elem.find("cache")
    if cache is None:
        return Cachetune(elem.get("vcpus", ""), -1, 0)
    return Cachetune(elem.get("vcpus", ""), int(cache.get("id", "-1")), _kib(cache))


def _disk(elem: ET.Element) -> DomainDisk:
    driver = elem.find("driver")
    attr = driver.attrib if driver is not None else {}
    return DomainDisk(elem.get("device", "disk"), _source(elem), _target(elem), attr.get("cache", ""),
                      attr.get("io", ""), attr.get("discard", ""), attr.get("iothread", ""))


def _source(disk: ET.Element) -> str:
    src = disk.find("source")
    if src is None:
        return ""
    return src.get("file") or src.get("dev") or src.get("name") or ""


def _target(disk: ET.Element) -> str:
    target = disk.find("target")
    return target.get("dev", "") if target is not None else ""


def expected_disks(vm: VM) -> list[DomainDisk]:
    disks = [DomainDisk("disk", vm.disk_path, "vda")]
    disks += [DomainDisk("disk", d.device or d.path, d.target) for d in vm.disks]
    disks.append(DomainDisk("cdrom", vm.cloud_init_iso_path, ""))
    return disks


def domain_checks(vm: VM, virt_type: str, dom: DomainSpec, tuning: DomainTuning) -> list[Check]:
    """Field by field, every pin on its own row, so drift names exactly what differs."""
    checks = [
        Check("domain type", virt_type, dom.virt_type, dom.virt_type == virt_type),
        Check("vcpus", str(vm.vcpu_count), str(dom.vcpus), dom.vcpus == vm.vcpu_count),
        Check("memory", f"{vm.memory_mb} MiB", f"{dom.memory_mb} MiB", dom.memory_mb == vm.memory_mb),
    ]
    for i, cpu in enumerate(vm.pins):
        found = dom.vcpu_pins.get(i)
        checks.append(Check(f"vcpupin {i}", str(cpu), format_cpulist(found) if found is not None else "unpinned",
                            found == frozenset({cpu})))
    for extra in sorted(set(dom.vcpu_pins) - set(range(len(vm.pins)))):
        checks.append(Check(f"vcpupin {extra}", "none", format_cpulist(dom.vcpu_pins[extra]), False))
    want_emu = vm.tuning.emulator_cpus
    checks.append(Check("emulatorpin", format_cpulist(want_emu), format_cpulist(dom.emulator_cpus) or "unpinned",
                        dom.emulator_cpus == want_emu))
    numa = vm.tuning.numa_memory
    checks.append(Check("numatune", f"{numa.nodeset} {numa.mode}",
                        f"{format_cpulist(dom.numa_nodes) or '-'} {dom.numa_mode or 'none'}",
                        dom.numa_nodes == numa.nodes and dom.numa_mode == numa.mode))
    found_disks = {(d.device, d.source): d for d in dom.disks}
    for disk in expected_disks(vm):
        got = found_disks.get((disk.device, disk.source))
        label = f"{disk.device} {disk.source}"
        if disk.device == "cdrom":
            checks.append(Check(label, "attached", "attached" if got else "missing", got is not None))
        else:
            checks.append(Check(label, f"attached as {disk.target}", f"attached as {got.target}" if got else "missing",
                                got is not None and got.target == disk.target))
    return checks + performance_checks(vm, dom, tuning)


def _row(name: str, want: str, found: str) -> Check:
    return Check(name, want, found, found == want)


def performance_checks(vm: VM, dom: DomainSpec, tuning: DomainTuning) -> list[Check]:
    """The settings lib/vmperf.py derives, one row each, read back from the defined XML."""
    checks = [_row("guest topology", str(tuning.topology), str(dom.topology) if dom.topology else "none")]
    if tuning.cache_passthrough:
        checks.append(_row("cpu mode", "host-passthrough, cache passthrough",
                           f"{dom.cpu_mode or 'default'}, cache {dom.cache_mode or 'default'}"))
    elif tuning.tcg_cpu_model:
        checks.append(_row("cpu model (TCG, threads)", tuning.tcg_cpu_model, dom.cpu_model or "default"))
    want_pages = f"{tuning.hugepage_kb} KiB, locked" if tuning.hugepage_kb else "none"
    found_pages = ", ".join(f"{kb} KiB" for kb in dom.hugepage_kb) or "none"
    if dom.hugepage_kb or dom.locked:
        found_pages += ", locked" if dom.locked else ", not locked"
    checks += [
        _row("memory sharing (KSM)", "nosharepages", "nosharepages" if dom.nosharepages else "allowed"),
        _row("memory balloon", "none", dom.memballoon or "default"),
        _row("hugepages", want_pages, found_pages),
        _row("iothreads", str(len(tuning.iothreads)), str(dom.iothreads)),
    ]
    by_target = {d.target: d for d in dom.disks if d.device == "disk"}
    for d in vm.disks:
        got = by_target.get(d.target)
        want = f"cache=none io=native discard=unmap iothread={tuning.iothreads[d.target]}"
        found = f"cache={got.cache or '-'} io={got.io or '-'} discard={got.discard or '-'} " \
                f"iothread={got.iothread or '-'}" if got else "missing"
        checks.append(_row(f"disk {d.target} driver", want, found))
    pins = dom.iothread_pins or {}
    for i in sorted(tuning.iothreads.values()):
        found_pin = pins.get(i)
        checks.append(_row(f"iothreadpin {i}", format_cpulist(tuning.iothread_cpus),
                           format_cpulist(found_pin) if found_pin is not None else "unpinned"))
    want_l3 = _cachetune_text(tuning.cachetune) if tuning.cachetune else "none"
    checks.append(_row("L3 cachetune", want_l3, "; ".join(_cachetune_text(c) for c in dom.cachetunes) or "none"))
    return checks


def _cachetune_text(c: Cachetune) -> str:
    return f"vCPUs {c.vcpus}: L3 id {c.cache_id} {c.size_kb} KiB"



def disk_xml_args(vm: VM, tuning: DomainTuning) -> list[str]:
    """The disks as raw XML edits (--disk none, then --xml XPATH=VALUE), not --disk path=...:
    virt-install's --disk creates a persistent, autostarted storage pool for every image folder it
    does not find in one (images, images-1, hdd, ... piling up on the host). --xml edits bypass its
    storage lookup entirely; libvirt adds the SATA controller the seed CD-ROM needs."""
    disks: list[tuple[str, str, str, str, str, dict[str, str]]] = [
        ("file", "disk", vm.disk_path, "vda", "virtio", {"type": "qcow2"})]
    for d in vm.disks:
        driver = _data_disk_driver(d.target, tuning)
        if d.device:
            disks.append(("block", "disk", d.device, d.target, "virtio", {"type": "raw", **driver}))
        else:
            disks.append(("file", "disk", d.path, d.target, "virtio", {"type": "qcow2", **driver}))
    disks.append(("file", "cdrom", vm.cloud_init_iso_path, "sda", "sata", {"type": "raw"}))
    args = ["--disk", "none"]
    for i, (kind, device, path, target, bus, driver) in enumerate(disks, 1):
        at = f"./devices/disk[{i}]"
        edits = [f"{at}/@type={kind}", f"{at}/@device={device}", f"{at}/driver/@name=qemu",
                 *[f"{at}/driver/@{k}={v}" for k, v in driver.items()],
                 f"{at}/source/@{'dev' if kind == 'block' else 'file'}={path}",
                 f"{at}/target/@dev={target}", f"{at}/target/@bus={bus}"]
        if device == "cdrom":
            edits.append(f"xpath.create={at}/readonly")
        for edit in edits:
            args += ["--xml", edit]
    return args


def virt_install_args(vm: VM, *, uri: str, virt_type: str, tuning: DomainTuning) -> list[str]:
    """virt-install arguments that write the definition (--print-xml): defining is not starting."""
    numa = vm.tuning.numa_memory
    args = [
        "virt-install", "--connect", uri, "--name", vm.name, "--virt-type", virt_type, "--import", "--noautoconsole",
        "--print-xml", "--vcpus", f"{vm.vcpu_count},{tuning.topology}", "--memory", str(vm.memory_mb),
        "--cputune", _cputune(vm, tuning), "--numatune", f"{numa.nodeset},mode={numa.mode}",
        *_cpu_args(tuning), *_memory_args(tuning), *_iothread_args(tuning),
        *disk_xml_args(vm, tuning),
    ]
    if vm.user_nic:
        # libvirt's own user-mode <interface> cannot forward ports in 9.0; QEMU's netdev can.
        # addr=0x10 keeps the NIC clear of the slots libvirt assigns to its own devices.
        nic = vm.user_nic
        # One word with '=': argparse would take a separate value starting with '-' for an option.
        forwards = {nic.host_port: 22, **nic.forwards}
        hostfwd = ",".join(f"hostfwd=tcp:{nic.listen}:{host}-:{guest}" for host, guest in forwards.items())
        args += ["--network", "none",
                 f"--qemu-commandline=-netdev user,id=n0,{hostfwd} "
                 f"-device virtio-net-pci,netdev=n0,addr=0x10,mac={vm.mac_address}"]
    else:
        args += ["--network", f"bridge={vm.bridge_network_interface},model=virtio,mac={vm.mac_address}"]
    if vm.boot:
        args += ["--boot", f"kernel={vm.boot.kernel},initrd={vm.boot.initrd},kernel_args={vm.boot.cmdline}"]
        if vm.boot.host_root:
            # -fsdev + -device rather than -virtfs: an explicit slot (0x11), as for the NIC.
            args.append("--qemu-commandline=-fsdev local,id=hostroot,path=/,security_model=none,readonly=on,"
                        "multidevs=remap -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot,addr=0x11")
    args += ["--osinfo", "detect=on,require=off", "--graphics", "none", "--console", "pty,target_type=serial"]
    return args


def _cputune(vm: VM, tuning: DomainTuning) -> str:
    parts = [f"vcpupin{i}.vcpu={i},vcpupin{i}.cpuset={cpu}" for i, cpu in enumerate(vm.pins)]
    parts.append(f"emulatorpin.cpuset={vm.tuning.emulator_cpuset}")
    cpus = format_cpulist(tuning.iothread_cpus)
    parts += [f"iothreadpin{k}.iothread={i},iothreadpin{k}.cpuset={cpus}"
              for k, i in enumerate(sorted(tuning.iothreads.values()))]
    if tuning.cachetune:
        c = tuning.cachetune
        parts.append(f"cachetune0.vcpus={c.vcpus},cachetune0.cache0.id={c.cache_id},cachetune0.cache0.level=3,"
                     f"cachetune0.cache0.type=both,cachetune0.cache0.size={c.size_kb},cachetune0.cache0.unit=KiB")
    return ",".join(parts)


def _cpu_args(tuning: DomainTuning) -> list[str]:
    """KVM: the host CPU and its cache topology. TCG cannot pass the host CPU through, and libvirt 9.0
    rejects "max" for it: QEMU's default model, or one that shows the guest its threads (vmperf)."""
    if tuning.cache_passthrough:
        return ["--cpu", "host-passthrough,cache.mode=passthrough"]
    return ["--cpu", tuning.tcg_cpu_model] if tuning.tcg_cpu_model else []


def _memory_args(tuning: DomainTuning) -> list[str]:
    """No KSM merging and no balloon for a pinned VM; hugepages (locked) when the inventory reserves them.

    The page has no nodeset: libvirt's <page nodeset> names GUEST NUMA cells, and the host node the
    pages come from is the strict numatune's.
    """
    backing = "nosharepages=on"
    if tuning.hugepage_kb:
        backing += f",hugepages=on,hugepages.page0.size={tuning.hugepage_kb},hugepages.page0.unit=KiB,locked=on"
    return ["--memorybacking", backing, "--memballoon", "none"]


def _iothread_args(tuning: DomainTuning) -> list[str]:
    return ["--iothreads", str(len(tuning.iothreads))] if tuning.iothreads else []


def _data_disk_driver(target: str, tuning: DomainTuning) -> dict[str, str]:
    """No host page cache (the guest caches; node memory stays the VMs'), native AIO, discard passed
    down so a qcow2 tier shrinks when the guest trims, and the disk's own I/O thread."""
    return {"cache": "none", "discard": "unmap", "io": "native", "iothread": str(tuning.iothreads[target])}


# -- live state, as libvirt's API reports it (Session.live_domain) ---------------------------------

_STATES = ("no state", "running", "blocked", "paused", "shutting down", "shut off", "crashed", "suspended")
_NUMA_MODES = ("strict", "preferred", "interleave", "restrictive")


@dataclass(frozen=True)
class LiveDomain:
    state: str
    autostart: bool
    vcpu_pins: dict[int, frozenset[int]]  # empty unless running
    emulator_cpus: frozenset[int]
    numa_mode: str
    numa_nodes: frozenset[int]


def _cpus(mask: tuple[bool, ...] | list[bool]) -> frozenset[int]:
    return frozenset(i for i, on in enumerate(mask) if on)


def live_domain(raw: dict[str, Any] | None) -> LiveDomain | None:
    """Pure: the API's values (state code, bool masks per vCPU, numa parameters) in inventory terms."""
    if raw is None:
        return None
    state = _STATES[raw["state"]] if 0 <= raw["state"] < len(_STATES) else f"state {raw['state']}"
    numa = raw.get("numa") or {}
    mode = numa.get("numa_mode")
    return LiveDomain(
        state=state, autostart=bool(raw["autostart"]),
        vcpu_pins={i: _cpus(mask) for i, mask in enumerate(raw.get("vcpu_pins") or ())},
        emulator_cpus=_cpus(raw.get("emulator_pin") or ()),
        numa_mode=_NUMA_MODES[mode] if isinstance(mode, int) and 0 <= mode < len(_NUMA_MODES) else "",
        numa_nodes=parse_cpulist(numa.get("numa_nodeset", "") or ""))


def live_checks(vm: VM, live: LiveDomain) -> list[Check]:
    """Running state, autostart, and the live pins; named after the virsh command that shows each."""
    checks = [Check("state", "running", live.state, live.state == "running"),
              Check("autostart", "enabled", "enabled" if live.autostart else "disabled", live.autostart)]
    if live.state != "running":
        return checks
    for i, cpu in enumerate(vm.pins):
        found = live.vcpu_pins.get(i)
        checks.append(Check(f"virsh vcpupin {vm.name} {i}", str(cpu),
                            format_cpulist(found) if found else "missing", found == frozenset({cpu})))
    want = vm.tuning.emulator_cpus
    checks.append(Check(f"virsh emulatorpin {vm.name}", format_cpulist(want), format_cpulist(live.emulator_cpus),
                        live.emulator_cpus == want))
    numa = vm.tuning.numa_memory
    checks.append(Check(f"virsh numatune {vm.name}", f"{numa.nodeset} {numa.mode}",
                        f"{format_cpulist(live.numa_nodes) or '-'} {live.numa_mode or 'none'}",
                        live.numa_nodes == numa.nodes and live.numa_mode == numa.mode))
    return checks


def parse_domifaddr(text: str) -> str | None:
    """The first IPv4 address in `virsh domifaddr` output (its table: Name, MAC, Protocol, Address)."""
    for line in text.splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[2] == "ipv4":
            return cells[3].split("/", 1)[0]
    return None
