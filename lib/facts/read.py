"""Shell fragments for fact reads that tell "absent" apart from "there but unreadable".

`cat FILE 2>/dev/null` read a file that exists but cannot be read (permissions, a directory in its
place, an I/O error) as a missing one, and a step then planned to write it. These fragments print
nothing for an absent file and fail the whole read, naming the path, for an unreadable one.
"""

from __future__ import annotations

UNREADABLE_EXIT = 3


def cat_if_present(path: str) -> str:
    """Shell code: the file's content; nothing when it does not exist; `unreadable: PATH` on stderr
    and exit 3 when it exists but cannot be read. `path` is shell code (e.g. `"$r"/etc/x.conf`)."""
    return (f"if [ -e {path} ] && ! cat {path}; then echo \"unreadable: \"{path} >&2; "
            f"exit {UNREADABLE_EXIT}; fi")
