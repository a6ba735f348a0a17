"""The seed as cloud-init itself reads it: every renderer's output from `cloud-init devel net-convert`,
instance-id that follows the content, MACs unique per host, the k3s mounts drop-in under systemd-analyze."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lib.cloudinit import mounts_dropin, mounts_dropin_path, network_config, seed_files
from lib.domain import virt_install_args
from lib.inventory.load import load_inventory
from lib.inventory.model import VM, Host, VmNetwork
from lib.inventory.rules import check_names
from lib.vmperf import domain_tuning
from tests.inventory_helpers import REPO
from tests.test_cloudinit import spec_vms

needs_cloud_init = pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init is not installed")

# renderer -> the distro whose layout it writes (sysconfig is Red Hat's)
RENDERERS = {"netplan": "debian", "networkd": "debian", "eni": "debian", "sysconfig": "centos"}


def net_convert(tmp_path: Path, text: str, renderer: str) -> str:
    """All files the renderer wrote, concatenated; fails the test with cloud-init's own error."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    src, out = tmp_path / f"{renderer}.yaml", tmp_path / f"out-{renderer}"
    src.write_text(text)
    done = subprocess.run(["cloud-init", "devel", "net-convert", "-p", str(src), "-k", "yaml", "-d", str(out),
                           "-D", RENDERERS[renderer], "-O", renderer], capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, f"{renderer}: {done.stderr[-2000:]}"
    return "\n".join(f"## {p.relative_to(out)}\n{p.read_text()}" for p in sorted(out.rglob("*")) if p.is_file())


# What each renderer writes for address, gateway, DNS and the MAC match (cloud-init 22.4's formats).
def expectations(vm: VM, renderer: str) -> list[str]:
    net = vm.network
    assert net is not None and net.gateway is not None
    mac, ip, gw, dns = vm.mac_address, net.address, net.gateway, net.dns[0]
    return {
        "netplan": [f"- {ip.with_prefixlen}", "macaddress: ", mac, "to: 0.0.0.0/0", f"via: {gw}",
                    f"- {dns}", "set-name: primary"],
        "networkd": [f"Address={ip.with_prefixlen}", f"MACAddress={mac}", "Name=primary", "Destination=0.0.0.0/0",
                     f"Gateway={gw}", f"DNS={dns}"],
        "eni": ["auto primary", "iface primary inet static", f"address {ip.with_prefixlen}",
                f"route add default gw {gw}", f"dns-nameservers {dns}", f'ATTR{{address}}=="{mac}", NAME="primary"'],
        "sysconfig": ["DEVICE=primary", f"HWADDR={mac}", f"IPADDR={ip.ip}", f"NETMASK={ip.netmask}",
                      f"GATEWAY={gw}", f"DNS1={dns}"],
    }[renderer]


@needs_cloud_init
@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_every_vm_network_renders_with_every_renderer(tmp_path: Path, renderer: str) -> None:
    for vm in spec_vms().values():
        rendered = net_convert(tmp_path / vm.name, network_config(vm), renderer)
        for want in expectations(vm, renderer):
            assert want in rendered, f"{vm.name} {renderer}: {want!r} not in\n{rendered}"


@needs_cloud_init
def test_the_old_default_route_is_what_networkd_and_eni_reject(tmp_path: Path) -> None:
    """The oracle can fail: `to: default` (the old spelling) is refused by cloud-init's own renderers."""
    vm = next(iter(spec_vms().values()))
    old = network_config(vm).replace("to: 0.0.0.0/0", "to: default")
    for renderer in ("networkd", "eni"):
        src = tmp_path / f"{renderer}.yaml"
        src.write_text(old)
        done = subprocess.run(["cloud-init", "devel", "net-convert", "-p", str(src), "-k", "yaml", "-d",
                               str(tmp_path / renderer), "-D", "debian", "-O", renderer], capture_output=True,
                              text=True, check=False, timeout=120)
        assert done.returncode != 0 and "default is not a valid ip address" in done.stderr, done.stderr[-500:]


@needs_cloud_init
@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_dhcp_vm_renders_with_every_renderer(tmp_path: Path, renderer: str) -> None:
    vm = spec_vms()["k3s-worker-slm"].model_copy(update={"network": None})
    rendered = net_convert(tmp_path, network_config(vm), renderer)
    want = {"netplan": "dhcp4: true", "networkd": "DHCP=ipv4", "eni": "iface primary inet dhcp",
            "sysconfig": "BOOTPROTO=dhcp"}[renderer]
    assert want in rendered and vm.mac_address in rendered, rendered


def test_mac_is_deterministic_unique_and_set_in_virt_install() -> None:
    vms = spec_vms()
    macs = {vm.mac_address for vm in vms.values()}
    assert len(macs) == len(vms) and all(m.startswith("52:54:00:") for m in macs)
    again = spec_vms()
    assert [v.mac_address for v in again.values()] == [v.mac_address for v in vms.values()]
    data = vms["k3s-worker-data"]
    loaded = load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"]
    args = virt_install_args(data, uri="qemu:///system", virt_type="kvm",
                             tuning=domain_tuning(loaded.host, loaded.cores, data))
    assert f"bridge=br0,model=virtio,mac={data.mac_address}" in args
    assert yaml.safe_load(network_config(data))["ethernets"]["primary"]["match"] == {"macaddress": data.mac_address}
    explicit = data.model_copy(update={"mac": "52:54:00:aa:bb:cc"})
    assert explicit.mac_address == "52:54:00:aa:bb:cc"


def test_two_vms_with_one_mac_are_an_inventory_error() -> None:
    from lib.inventory.load import load_inventory
    from tests.inventory_helpers import REPO

    host: Host = load_inventory(REPO / "hosts", ["hv1"]).hosts["hv1"].host
    assert not [f for f in check_names(host) if f.rule == "mac.duplicate"]
    vms = list(host.vms)
    vms[2] = vms[2].model_copy(update={"mac": vms[0].mac_address})
    (finding,) = [f for f in check_names(host.model_copy(update={"vms": tuple(vms)})) if f.rule == "mac.duplicate"]
    assert finding.path == "vms[2].mac" and vms[0].mac_address in finding.message and vms[0].name in finding.message


def test_mac_must_be_unicast_lower_case() -> None:
    from pydantic import ValidationError

    base = spec_vms()["k3s-worker-slm"].model_dump()
    for bad in ("53:54:00:aa:bb:cc", "52:54:00:AA:BB:CC", "52-54-00-aa-bb-cc"):
        with pytest.raises(ValidationError, match="unicast MAC address"):
            VM.model_validate(base | {"mac": bad})


def test_instance_id_follows_the_seed_content() -> None:
    vm = spec_vms()["k3s-worker-slm"]
    iid = yaml.safe_load(seed_files(vm)["meta-data"])["instance-id"]
    assert iid.startswith(f"{vm.name}-") and iid == yaml.safe_load(seed_files(vm)["meta-data"])["instance-id"]
    user = vm.user_configs[0].model_copy(update={"ssh_authorized_keys": ("ssh-ed25519 AAAAnew new@key",)})
    changed = [vm.model_copy(update={"user_configs": (user,)}),
               vm.model_copy(update={"network": VmNetwork.model_validate({"address": "10.0.0.99/24"})}),
               vm.model_copy(update={"packages": ("jq",)})]
    ids = {yaml.safe_load(seed_files(v)["meta-data"])["instance-id"] for v in changed}
    assert iid not in ids and len(ids) == len(changed)


def test_seed_keeps_host_keys_across_instances() -> None:
    assert yaml.safe_load(seed_files(spec_vms()["k3s-worker-slm"])["user-data"])["ssh_deletekeys"] is False


K3S_UNIT = """[Unit]
Description=Lightweight Kubernetes
Wants=network-online.target
After=network-online.target
[Service]
Type=exec
ExecStart=/bin/true agent
[Install]
WantedBy=multi-user.target
"""


def verify_unit(tmp_path: Path, name: str, dropin: str) -> str:
    units = tmp_path / "units"
    (units / f"{name}.d").mkdir(parents=True)
    (units / name).write_text(K3S_UNIT)
    (units / f"{name}.d" / "10-data-mounts.conf").write_text(dropin)
    done = subprocess.run(["systemd-analyze", "verify", str(units / name)], capture_output=True, text=True,
                          check=False, env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin"}, timeout=60)
    return done.stderr + (f"exit {done.returncode}" if done.returncode else "")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_k3s_waits_for_the_data_mounts(tmp_path: Path) -> None:
    vm = spec_vms()["k3s-worker-data"]
    doc = yaml.safe_load(seed_files(vm)["user-data"])
    (entry,) = doc["write_files"]
    assert entry["path"] == mounts_dropin_path(vm) == "/etc/systemd/system/k3s-agent.service.d/10-data-mounts.conf"
    assert (entry["owner"], entry["permissions"]) == ("root:root", "0644")
    parsed = configparser.ConfigParser()
    parsed.read_string(entry["content"])
    assert parsed["Unit"]["RequiresMountsFor"].split() == ["/data/hot", "/data/lake"]
    assert verify_unit(tmp_path / "good", "k3s-agent.service", mounts_dropin(vm)) == ""
    # systemd-analyze does complain about a drop-in it cannot use
    bad = verify_unit(tmp_path / "bad", "k3s-agent.service", "[Unit]\nRequiresMountsFor=data/hot\n")
    assert "not absolute" in bad
    assert "write_files" not in yaml.safe_load(seed_files(spec_vms()["k3s-worker-slm"])["user-data"])
