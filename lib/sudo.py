"""What the tool says when the SSH user has no passwordless sudo: the same words from preflight.access
(a failed check) and from the engine (the host lock's own sudo refused before any step ran)."""

from __future__ import annotations

SUDOERS_DROPIN = "/etc/sudoers.d/numa-k3s"


def sudo_advice(host: str, user: str, sudo: str) -> str:
    """How to fix a user whose sudo is "missing" or asks for a "password"."""
    line = f"{user} ALL=(ALL) NOPASSWD:ALL"
    if sudo == "missing":
        return (f"user {user} on {host} is not root and sudo is not installed: apt-get install sudo, then add "
                f"'{line}' to {SUDOERS_DROPIN} (visudo -f {SUDOERS_DROPIN})")
    return (f"user {user} on {host} cannot run sudo without a password: add '{line}' to "
            f"{SUDOERS_DROPIN} (visudo -f {SUDOERS_DROPIN}, mode 0440)")


def sudo_refusal(host: str, user: str, exc: Exception) -> str | None:
    """The preflight text for a command sudo refused for want of a password (None: another error)."""
    result = getattr(exc, "result", None)
    if user == "root" or result is None or "sudo: a password is required" not in result.stderr:
        return None
    return f"preflight.access: {sudo_advice(host, user, 'password')}"
