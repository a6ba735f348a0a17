"""The inventory schema: one hosts/<name>.yaml per hypervisor, merged over hosts/defaults.yaml.

Schema checks (types, required and unknown keys) are pydantic's; checks on a single value that
carry a rule id of ours raise PydanticCustomError with that id as the error type, so load.py can
report them like any other rule. Rules that relate several fields live in rules.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import cached_property
from ipaddress import IPv4Address, IPv4Interface
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt
from pydantic_core import PydanticCustomError

from lib.cpuset import parse_cpulist

# Characters that never need quoting in a POSIX shell word. Anything that reaches a command line
# must stay inside this set, so a value can never smuggle `;`, `$()`, quotes or spaces.
_SAFE = re.compile(r"[A-Za-z0-9._/:@+=,%~-]*")
# RFC 1123 hostname label; also a valid libvirt domain name.
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_IFACE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}")
_TAINT = re.compile(r"(?P<key>[A-Za-z0-9./_-]+)(=(?P<value>[A-Za-z0-9._-]*))?:(?P<effect>[A-Za-z]+)")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# A Kubernetes label: [prefix/]name=value, name and value 63 characters at most, alphanumeric at both
# ends (the API server's own check). Anything else reaches k3s's --node-label and is refused there.
_LABEL_NAME = r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"([a-z0-9]([a-z0-9.-]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")


def _safe(value: str) -> str:
    _not_option(value)
    if not _SAFE.fullmatch(value):
        bad = sorted({c for c in value if not _SAFE.fullmatch(c)})
        raise PydanticCustomError(
            "value.shell-unsafe",
            "{value} contains {bad}, which is not allowed in a value that reaches a command line",
            {"value": repr(value), "bad": " ".join(repr(c) for c in bad)},
        )
    return value


def _not_option(value: str) -> str:
    """A value that becomes a command's argument (apt, kubectl, virsh, qemu-img) must not start with
    '-': the command would read it as an option, whatever quoting the shell gets."""
    if value.startswith("-"):
        raise PydanticCustomError(
            "value.option-like",
            "{value} starts with '-', which the command it reaches would read as an option; remove the '-'",
            {"value": repr(value)})
    return value


def is_name(value: str) -> bool:
    return bool(_NAME.fullmatch(value))


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise PydanticCustomError(
            "name.invalid",
            "{value} is not a valid name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (RFC 1123, also a valid libvirt domain name)",
            {"value": repr(value)},
        )
    return value


def normal_path(value: str) -> str:
    """The one spelling rules compare and steps use: '//' and '/./' collapsed, no trailing '/'.
    Not '..': which directory it leads to depends on symlinks on the host, so it is refused instead."""
    parts = [p for p in value.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def _abs_path(value: str) -> str:
    _safe(value)
    if not value.startswith("/"):
        raise PydanticCustomError("path.not-absolute", "{value} is not an absolute path", {"value": repr(value)})
    if ".." in value.split("/"):
        raise PydanticCustomError("path.not-absolute", "{value} must not contain '..'", {"value": repr(value)})
    return normal_path(value)


def _rel_path(value: str) -> str:
    _safe(value)
    if value.startswith("/") or ".." in value.split("/") or not value:
        raise PydanticCustomError(
            "path.not-relative", "{value} must be a relative path inside the mount, without '..'",
            {"value": repr(value)},
        )
    return value


def _cpulist(value: str) -> str:
    if value != value.strip():  # parse_cpulist allows sysfs's trailing newline; a file value is one word
        raise PydanticCustomError("cpulist.invalid", "{value}: no spaces or newlines around a cpulist",
                                  {"value": repr(value)})
    try:
        parse_cpulist(value)
    except ValueError as exc:
        raise PydanticCustomError("cpulist.invalid", "{value}: {why}", {"value": repr(value), "why": str(exc)}) from exc
    return value


def _pattern(rule: str, regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise PydanticCustomError(rule, "{value} is not a valid {what}", {"value": repr(value), "what": what})
        return value

    return check


def _taint(value: str) -> str:
    match = _TAINT.fullmatch(value)
    if not match or match["effect"] not in TAINT_EFFECTS:
        raise PydanticCustomError(
            "k3s.taint-format",
            "{value} is not a taint: use key[=value]:Effect with Effect one of {effects}",
            {"value": repr(value), "effects": ", ".join(TAINT_EFFECTS)},
        )
    return value


Word = Annotated[str, AfterValidator(_safe)]
Name = Annotated[str, AfterValidator(_name)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
RelPath = Annotated[str, AfterValidator(_rel_path)]
Cpulist = Annotated[str, AfterValidator(_cpulist)]
UserName = Annotated[str, AfterValidator(_pattern("name.invalid", _USER, "Linux user name"))]
IfaceName = Annotated[str, AfterValidator(_not_option),
                      AfterValidator(_pattern("name.invalid", _IFACE, "network interface name"))]
Taint = Annotated[str, AfterValidator(_not_option), AfterValidator(_taint)]
LabelKey = Annotated[str, AfterValidator(_not_option),
                     AfterValidator(_pattern("k3s.label", _LABEL_KEY, "Kubernetes label key ([prefix/]name)"))]
LabelValue = Annotated[str, AfterValidator(_not_option),
                       AfterValidator(_pattern("k3s.label", _LABEL_VALUE, "Kubernetes label value"))]
# A unicast MAC address, lower case, colon separated (what libvirt and cloud-init's match compare).
MacAddress = Annotated[str, AfterValidator(_pattern("mac.invalid", re.compile(r"[0-9a-f][02468ace](:[0-9a-f]{2}){5}"),
                                                    "unicast MAC address (lower case, aa:bb:cc:dd:ee:ff)"))]
CpuId = Annotated[int, Field(ge=0)]


class Model(BaseModel):
    """Frozen and strict about keys: a typo like `vcpu_pin` is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NumaMemory(Model):
    nodeset: Cpulist
    mode: Literal["strict", "preferred", "interleave", "restrictive"] = "strict"

    @cached_property
    def nodes(self) -> frozenset[int]:
        return parse_cpulist(self.nodeset)


class VmTuning(Model):
    # Optional: a VM that gives only vcpu_count and nodeset gets pins from the planner.
    vcpu_pins: tuple[CpuId, ...] | None = None
    emulator_cpuset: Cpulist
    numa_memory: NumaMemory
    # Back the guest's memory with the host's hugepages reserved on its nodeset (hugepages: below),
    # locked in RAM. Without it a pinned VM still gets <nosharepages/> and no balloon.
    hugepages: bool = False
    # MB of L3 given to this VM's vCPUs alone through resctrl (Intel CAT / AMD L3 QoS) cachetune;
    # the rest of the L3 stays with the host and the emulators. Unset: the L3 is shared.
    exclusive_l3_mb: PositiveInt | None = None

    @cached_property
    def emulator_cpus(self) -> frozenset[int]:
        return parse_cpulist(self.emulator_cpuset)


class UserConfig(Model):
    username: UserName
    ssh_authorized_keys: tuple[str, ...] = ()
    # Local public key files (~ expanded), read when the inventory loads and added to the keys above.
    ssh_authorized_key_files: tuple[str, ...] = ()


class ExtraDisk(Model):
    """A disk beyond the OS overlay, such as the data VM's hot (SSD) and cold (HDD) tiers."""

    name: Name
    path: AbsPath
    size_gb: PositiveInt
    target: Annotated[str, AfterValidator(_pattern("disk.target", re.compile(r"vd[b-z]"), "disk target (vdb..vdz)"))]
    tier: Literal["ssd", "hdd"]
    mount: AbsPath
    directories: tuple[RelPath, ...] = ()
    filesystem: Literal["ext4", "xfs"] = "ext4"
    # A block device to hand to the VM instead of creating an image at `path`.
    device: AbsPath | None = None
    # qcow2 cluster size in KiB (a power of two, 64..2048); unset: the smallest cluster with which
    # QEMU's default 32 MiB L2 cache maps the whole disk (cluster_kib below).
    cluster_kib: Literal[64, 128, 256, 512, 1024, 2048] | None = None

    @property
    def cluster_bytes(self) -> int:
        """Each 8-byte L2 entry maps one cluster, so 32 MiB of L2 cache covers 4 Mi clusters: 64 KiB
        clusters (qemu-img's default) cover 256 GiB, 2 MiB clusters 8 TiB. A disk larger than its
        clusters cover misses the metadata cache on random reads (one extra read per miss)."""
        if self.cluster_kib:
            return self.cluster_kib * 1024
        need = self.size_gb * 1024**3 // (4 * 1024**2)
        size = 64 * 1024
        while size < need and size < 2 * 1024**2:
            size *= 2
        return size


class K8sNode(Model):
    role: Literal["server", "agent"]
    taints: tuple[Taint, ...] = ()
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)


class VmNetwork(Model):
    """A static address for the VM's NIC on the bridge; without it the VM asks DHCP."""

    address: IPv4Interface  # 10.0.0.11/24
    gateway: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()


class VmSsh(Model):
    """How the tool reaches a VM over SSH once it runs (k3s steps, cloud-init wait)."""

    # Unset: vms.start waits for the address `virsh domifaddr` reports (DHCP lease, then ARP);
    # the steps inside the VMs (k3s) need it set.
    host: Word | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    user: UserName = "admin"
    # Unset: the hypervisor's ssh.key_file / known_hosts.
    key_file: Word | None = None
    known_hosts: Word | None = None
    # Reach the VM through the hypervisor's SSH connection (a jump host), as on a private bridge.
    jump: bool = True
    # strict (the default): the VM's key must be in known_hosts already. A VM this tool creates has a
    # key nobody knows yet: accept-new records it on first use and refuses a changed one later
    # (OpenSSH's StrictHostKeyChecking=accept-new). An explicit opt-in, never the default.
    host_key: Literal["accept-new", "strict"] = "strict"


class DirectBoot(Model):
    """Boot a kernel and initramfs directly instead of the disk's boot loader (the lab's tiny guests)."""

    kernel: AbsPath
    initrd: AbsPath
    cmdline: Annotated[str, AfterValidator(_pattern("boot.cmdline", re.compile(r"[A-Za-z0-9._/:= -]*"),
                                                    "kernel command line"))] = "console=ttyS0"
    # Lab only: share the hypervisor's own / read-only with the guest over 9p (mount tag hostroot),
    # the lower layer of the root the cloud guest boots (lab/build-cloud-guest.sh).
    host_root: bool = False


class UserNic(Model):
    """QEMU user-mode networking with one host port forwarded to the guest's SSH port.

    For labs without a bridge (the test machine); a production VM uses bridge_network_interface.
    """

    host_port: Annotated[int, Field(ge=1024, le=65535)]
    # QEMU's user-mode stack gives the guest 10.0.2.15; only the forwards are reachable from outside.
    listen: IPv4Address = IPv4Address("127.0.0.1")
    # More forwards, host port -> guest port (the k3s API of the server VM, which the other guests
    # reach as 10.0.2.2:<host port>).
    forwards: dict[Annotated[int, Field(ge=1024, le=65535)], Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=dict)


class VM(Model):
    # The spec's JSON fields, verbatim.
    name: Name
    vcpu_count: PositiveInt
    memory_mb: PositiveInt
    disk_path: AbsPath
    disk_size_gb: PositiveInt
    base_image_path: AbsPath
    bridge_network_interface: IfaceName
    cloud_init_iso_path: AbsPath
    tuning: VmTuning
    user_configs: tuple[UserConfig, ...] = ()
    # What the spec says in prose, made data.
    disks: tuple[ExtraDisk, ...] = ()
    k8s: K8sNode | None = None
    ssh: VmSsh | None = None
    network: VmNetwork | None = None
    packages: tuple[Word, ...] = ()  # installed by cloud-init on first boot
    # Lab-only: direct kernel boot and a user-mode NIC instead of the bridge (see hosts/lab.yaml).
    boot: DirectBoot | None = None
    user_nic: UserNic | None = None
    # The NIC's MAC address; unset: derived from the VM's name (mac_address), so the domain and the
    # seed's `match: macaddress` agree without anyone writing it down.
    mac: MacAddress | None = None

    @property
    def mac_address(self) -> str:
        """52:54:00 (the prefix libvirt/QEMU use) + the first 3 bytes of sha256(name): the same VM name
        always gets the same MAC; two VMs of one host that collide are an inventory error (mac.duplicate)."""
        if self.mac:
            return self.mac
        digest = hashlib.sha256(self.name.encode()).digest()
        return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])

    @property
    def pins(self) -> tuple[int, ...]:
        """vCPU pins; always set once the inventory is loaded (given or planned)."""
        return self.tuning.vcpu_pins or ()


class NumaNode(Model):
    id: Annotated[int, Field(ge=0)]
    cpus: Cpulist
    memory_mb: PositiveInt

    @cached_property
    def cpu_set(self) -> frozenset[int]:
        return parse_cpulist(self.cpus)


class Topology(Model):
    sockets: PositiveInt
    cores_per_socket: PositiveInt
    threads_per_core: PositiveInt
    # "spread": Linux's usual Intel numbering (cpu k and k + all cores are siblings);
    # "adjacent": siblings have consecutive ids (common on AMD); "listed": neither, the cores are
    # sibling_sets (one cpulist per core, as the host's core_cpus_list shows them).
    sibling_layout: Literal["spread", "adjacent", "listed"] = "spread"
    sibling_sets: tuple[Cpulist, ...] | None = None
    # Per socket: the sum of the socket's distinct L3 instances (8 CCXs x 8 MB = 64 on an EPYC
    # 7401). None: the host reports no L3 (some virtual machines).
    l3_cache_mb: PositiveInt | None = None
    nodes: tuple[NumaNode, ...] = Field(min_length=1)

    @property
    def cpu_count(self) -> int:
        return self.sockets * self.cores_per_socket * self.threads_per_core

    @cached_property
    def all_cpus(self) -> frozenset[int]:
        return frozenset().union(*(n.cpu_set for n in self.nodes))

    @cached_property
    def node_of_cpu(self) -> dict[int, int]:
        return {cpu: node.id for node in self.nodes for cpu in node.cpu_set}


class HugepageReservation(Model):
    """Hugepages reserved on one NUMA node (node*/hugepages/hugepages-<kB>kB/nr_hugepages)."""

    node: Annotated[int, Field(ge=0)]
    size: Literal["2M", "1G"] = "2M"  # 1G needs the CPU's pdpe1gb flag (bios.check)
    count: Annotated[int, Field(ge=0)]

    @property
    def size_kb(self) -> int:
        return 2048 if self.size == "2M" else 1048576

    @property
    def mb(self) -> int:
        return self.count * self.size_kb // 1024


class Confinement(Model):
    """Host work (every process outside machine.slice, and IRQs) kept off the VMs' vCPU CPUs."""

    # AllowedCPUs= for system.slice, user.slice and init.scope (cgroup v2 cpuset), persisted as drop-ins.
    host_cpus: bool = True
    # irqbalance's banned CPUs, and the affinity of the IRQs that exist, moved to the host CPUs.
    irqs: bool = True


class HostTuning(Model):
    cpu_governor: Literal["performance", "powersave", "schedutil", "ondemand", "conservative"] = "performance"
    numa_balancing: Literal[0, 1] = 0
    thp_enabled: Literal["always", "madvise", "never"] = "always"
    thp_defrag: Literal["always", "defer", "defer+madvise", "madvise", "never"] = "always"
    confinement: Confinement = Confinement()
    # isolcpus/nohz_full/rcu_nocbs on every vCPU CPU through the boot loader (host.isolation); the
    # running kernel gets them only after a reboot, which is host.reboot with --reboot, never implied.
    kernel_isolation: bool = False


class SshSettings(Model):
    host: Word
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    user: UserName = "root"
    # Local paths; `~` is expanded on the operator's machine.
    key_file: Word | None = None
    known_hosts: Word | None = None
    # strict (the default): the host's key must be in known_hosts; an unknown or changed key is
    # refused before logging in. accept-new: the documented opt-in for first contact, records an
    # unknown key in known_hosts, still refuses a changed one.
    host_key: Literal["accept-new", "strict"] = "strict"


class K3sSettings(Model):
    version: Annotated[str, AfterValidator(_pattern("k3s.version", re.compile(r"v\d+\.\d+\.\d+\+k3s\d+"),
                                                     "k3s version (like v1.31.4+k3s1)"))]
    install: Literal["online", "airgap"] = "online"
    # online: where install.sh comes from, and (k3s's GITHUB_URL) the release it downloads the binary
    # and sha256sum-amd64.txt from, as <download_url>/download/<version>/. With download_url set (a
    # mirror), the images tarball of the release comes from there too; without, containerd pulls images.
    install_script_url: Word = "https://get.k3s.io"
    download_url: Word | None = None
    # Installer and download URLs must be https; true allows a plain-http mirror (named in the plan).
    allow_http_mirror: bool = False
    # airgap: a local folder with install.sh, k3s and k3s-airgap-images-amd64.tar.zst of that version.
    artifacts_dir: Word | None = None
    api_port: Annotated[int, Field(ge=1, le=65535)] = 6443
    # Where agents reach the API when it is not https://<server address>:<api_port> (a NAT or a
    # port forward, as in the lab).
    server_url: Word | None = None
    # A local path (never on a command line); {host} is the hypervisor's name. Kept outside the
    # repository, 0600; generated once per cluster when absent.
    token_file: str = "~/.config/numa-k3s/{host}.token"  # noqa: S105 - a path, not a secret
    # The k3s VM whose taints kube-system tolerates, so that k3s's packaged add-ons (CoreDNS,
    # metrics-server, local-path-provisioner, Traefik) run there when no node takes them as k3s
    # ships them (docs/steps.md: "Add-ons and the spec's taints"). The taints themselves stay as written.
    addon_node: Name | None = None
    # k3s's own --disable: packaged components not deployed (and not checked by verify.k3s).
    disable: tuple[Literal["coredns", "servicelb", "traefik", "local-storage", "metrics-server"], ...] = ()


class Host(Model):
    """One hypervisor: hosts/<name>.yaml merged over hosts/defaults.yaml."""

    ssh: SshSettings
    sysroot: AbsPath = "/"
    libvirt_uri: Word = "qemu:///system"
    # One run at a time per hypervisor: the lock file on the hypervisor (see lib/lock.py).
    lock_path: AbsPath = "/run/lock/numa-k3s.lock"
    # A lab host (hosts/lab.yaml, hosts/numalab.yaml): lab-only settings (boot.host_root, user-mode
    # NICs, kernel/initrd boot) are refused on every other host.
    lab: bool = False
    # Where the hypervisor stands (a data centre, a rack row): fleet rollouts order their waves by it,
    # limit how many hosts of one site run at once, and `--site=X` selects by it (lib/fleet/plan.py).
    site: Name | None = None
    # The only places the tool creates, replaces or deletes images, seed ISOs and data disks: every
    # such path must lie under one of these once normalised, and by its real path on the host.
    storage_roots: tuple[AbsPath, ...] = ("/var/lib/libvirt/images", "/srv")
    # Block devices a VM may be given (vms[].disks[].device): an explicit allow-list, empty by default.
    block_devices: tuple[AbsPath, ...] = ()
    virt_type: Literal["kvm", "qemu"] = "kvm"
    bridge: IfaceName
    topology: Topology
    # CPUs kept for the host beyond the emulator sets, and memory kept per NUMA node.
    host_reserved_cpus: Cpulist = ""
    host_reserved_memory_mb: Annotated[int, Field(ge=0)] = 4096
    # forbid: a CPU is one VM's vCPU, never shared. allow: a lab smaller than its VMs (2 CPUs for
    # four VMs) shares CPUs; the pin rules then warn instead of failing. Never for production.
    pin_sharing: Literal["forbid", "allow"] = "forbid"
    tuning: HostTuning = HostTuning()
    hugepages: tuple[HugepageReservation, ...] = ()
    k3s: K3sSettings
    vms: tuple[VM, ...] = ()

    @cached_property
    def reserved_cpus(self) -> frozenset[int]:
        return parse_cpulist(self.host_reserved_cpus)
