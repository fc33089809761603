"""Our own argv, as ``ps`` and ``/proc/<pid>/cmdline`` show it to every user.

Here and not in the daemon: the CLI masks the password before it imports the rest of pyflannel,
so the window in which ``--etcd-password`` is readable is the interpreter's start-up alone.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def hide_password_in_cmdline(argv_flags: tuple[str, ...] = ("-etcd-password", "--etcd-password")) -> bool:
    """Overwrite the value of ``--etcd-password`` in our own argv with ``*``.

    ``ps`` and ``/proc/<pid>/cmdline`` (world-readable) show the argv memory of the process; it is
    rewritten in place through ``/proc/self/mem``. Returns True if something was hidden.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            args = mem.read(end - start).split(b"\0")
            out, hide_next, hidden = [], False, False
            for arg in args:
                name, eq, _value = arg.partition(b"=")
                if hide_next:
                    arg, hide_next, hidden = b"*" * len(arg), False, True
                elif name.decode(errors="replace") in argv_flags:
                    if eq:
                        arg, hidden = name + eq + b"*" * len(_value), True
                    else:
                        hide_next = True
                out.append(arg)
            if hidden:
                mem.seek(start)
                mem.write(b"\0".join(out))
            return hidden
    except (OSError, ValueError, IndexError) as e:
        log.warning("could not hide --etcd-password from the process arguments: %s", e)
        return False
