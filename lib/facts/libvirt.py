"""Reads of libvirt state through virsh that tell "no such domain" apart from "libvirt did not answer".

`virsh domstate X 2>/dev/null || echo 'not defined'` reported a stopped libvirtd (or a refused
socket, or a permission error) as a missing domain, and a provision would then plan to define it
again. Here only libvirt's own "failed to get domain" means absent; anything else fails the read.
"""

from __future__ import annotations

from lib.shell import Command, sh

ABSENT = "not defined"


def domstate(uri: str, name: str) -> Command:
    """Shell code that sets $state: the domain's state, or 'not defined' when libvirt says there is
    no such domain; when libvirt does not answer it prints virsh's message on stderr and exits 1."""
    return sh("if out=$(LC_ALL=C virsh -c {uri} domstate {name} 2>&1); then state=$out; "
              "else case $out in *'failed to get domain'*) state='" + ABSENT + "';; "
              "*) printf '%s\\n' \"$out\" >&2; exit 1;; esac; fi", uri=uri, name=name)


PRINT_STATE = 'printf "%s\\n" "$state"'
