"""The lab's tiny guest (lab/build-guest.sh) boots under TCG, takes its seed and answers SSH and SFTP.

One transient libvirt domain as the project's VMs are made: direct kernel boot, q35 with the NoCloud
seed ISO (label cidata) on SATA, and a user-mode NIC whose host port forwards to the guest's port 22.
The guest prints its SSH host key on the serial console; the client checks the key against it.
"""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import quoteattr

import paramiko
import pytest
import yaml

from tests.harness.guest import build_guest, free_port

URI = "qemu:///system"
# A safety net, not a speed test: under TCG with seven other test runs on 2 CPUs a boot took
# over 280 s (#14), and 90 s failed `make test` on a busy machine.
BOOT_TIMEOUT_S = 600.0
HOSTNAME = "tiny1"


@pytest.fixture(scope="module")
def guest() -> Path:
    return build_guest()


def seed_iso(tmp_path: Path, pubkey: str) -> Path:
    """The seed as lib/cloudinit.py shapes it (PyYAML block lists; a long key folds onto two lines)."""
    seed = tmp_path / "seed"
    seed.mkdir()
    users = [{"name": name, "shell": "/bin/bash", "lock_passwd": True, "ssh_authorized_keys": [pubkey]}
             for name in ("root", "admin")]
    (seed / "user-data").write_text("#cloud-config\n" + yaml.safe_dump({"users": users}, sort_keys=False))
    (seed / "meta-data").write_text(yaml.safe_dump({"instance-id": HOSTNAME, "local-hostname": HOSTNAME}))
    iso = tmp_path / "seed.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o", str(iso), str(seed)],
                   check=True, capture_output=True, timeout=60)
    return iso


def domain_xml(name: str, guest: Path, iso: Path, console: Path, port: int) -> str:
    def q(value: object) -> str:
        return quoteattr(str(value))

    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{guest / "vmlinuz"}</kernel>
    <initrd>{guest / "initrd.img"}</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file={q(iso)}/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <serial type='file'>
      <source path={q(console)}/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value={q(f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22")}/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=n0,addr=0x10'/>
  </qemu:commandline>
</domain>
"""


def domstate(name: str) -> str:
    done = subprocess.run(["virsh", "-c", URI, "domstate", name], capture_output=True, text=True, check=False,
                          timeout=60)
    return done.stdout.strip() or done.stderr.strip()


def tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no serial log)"
    return "\n--- serial console (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def host_key_from(console: Path) -> paramiko.PKey | None:
    """The key from the guest's 'tinyguest: host key ssh-ed25519 AAAA...' console line, once it is there."""
    text = console.read_text(errors="replace") if console.exists() else ""
    for line in text.splitlines():
        if line.startswith("tinyguest: host key ssh-"):
            kind, blob = line.split()[3:5]
            return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
    return None


def connect(port: int, user: str, key: Path, host_key: paramiko.PKey) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{port}", host_key.get_name(), host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect("127.0.0.1", port=port, username=user, key_filename=str(key), timeout=10, banner_timeout=10,
                       auth_timeout=10, allow_agent=False, look_for_keys=False)
    except BaseException:
        client.close()  # a failed attempt must not keep holding one of sshd's MaxStartups slots
        raise
    return client


def run(client: paramiko.SSHClient, command: str) -> str:
    _, stdout, stderr = client.exec_command(command, timeout=30)
    out = stdout.read().decode()
    status = stdout.channel.recv_exit_status()
    assert status == 0, f"{command!r} exited {status}: {stderr.read().decode()}"
    return out


def test_tiny_guest_boots_takes_its_seed_and_answers_ssh_and_sftp(guest: Path, tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "guest-image-test", "-f", str(key)],
                   check=True, timeout=30)
    iso = seed_iso(tmp_path, Path(f"{key}.pub").read_text().strip())
    console = tmp_path / "console.log"
    port = free_port()
    name = f"tinyguest-test-{uuid.uuid4().hex[:8]}"
    xml = tmp_path / "domain.xml"
    xml.write_text(domain_xml(name, guest, iso, console, port))

    created = subprocess.run(["virsh", "-c", URI, "create", str(xml)], capture_output=True, text=True, check=False,
                             timeout=120)
    assert created.returncode == 0, created.stderr
    try:
        started = time.monotonic()
        client: paramiko.SSHClient | None = None
        host_key: paramiko.PKey | None = None
        last_error = "the console never showed the host key"
        while client is None and time.monotonic() - started < BOOT_TIMEOUT_S:
            host_key = host_key or host_key_from(console)
            if host_key is not None:
                try:
                    client = connect(port, "root", key, host_key)
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
            if client is None:
                assert domstate(name) == "running", f"the guest stopped: {domstate(name)}{tail(console)}"
                time.sleep(0.5)
        why = f"no SSH within {BOOT_TIMEOUT_S:.0f} s ({last_error}){tail(console)}"
        assert client is not None and host_key is not None, why
        print(f"boot to SSH: {time.monotonic() - started:.1f} s")  # shown with pytest -s

        with client:
            assert run(client, "hostname").strip() == HOSTNAME, tail(console)
            assert "console=ttyS0 quiet" in run(client, "cat /proc/cmdline")
            assert run(client, "cat /run/tinyguest/modules-loaded").split() == (guest / "modules").read_text().split()
            assert "local-hostname: tiny1" in run(client, "cat /var/lib/cloud/seed/nocloud/meta-data")
            # admin got its own account, home and key file, owned by it with the modes sshd insists on.
            assert run(client, "grep ^admin: /etc/passwd").strip() == "admin:x:1000:1000::/home/admin:/bin/sh"
            assert run(client, "stat -c '%U %a' /home/admin/.ssh /home/admin/.ssh/authorized_keys").split() == [
                "admin", "700", "admin", "600"]

            payload = f"written over sftp by {name}\n".encode()
            with client.open_sftp() as sftp:
                with sftp.open("/var/lib/probe.txt", "wb") as f:
                    f.write(payload)
                with sftp.open("/var/lib/probe.txt", "rb") as f:
                    assert f.read() == payload
                assert sftp.stat("/var/lib/probe.txt").st_size == len(payload)
            assert run(client, "cat /var/lib/probe.txt").encode() == payload

        with connect(port, "admin", key, host_key) as admin:
            assert run(admin, "id -un; echo $HOME").split() == ["admin", "/home/admin"]
    finally:
        subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True, check=False, timeout=120)
