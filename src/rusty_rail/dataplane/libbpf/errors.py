"""The binding's one exception, LibbpfError, and how a failure is described: the errno of a
libbpf result, the name of an interface, the verifier's log out of libbpf's messages.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
import socket
from collections.abc import Sequence


class LibbpfError(OSError):
    """A libbpf or bpf(2) operation failed. ``operation`` names what was attempted and on
    what; ``libbpf_log`` holds what libbpf printed meanwhile; ``verifier_log`` the verifier's
    output when a program failed to load."""

    def __init__(
        self,
        err: int,
        operation: str,
        *,
        hint: str | None = None,
        libbpf_log: Sequence[str] = (),
    ) -> None:
        err = abs(err)
        super().__init__(err, os.strerror(err))
        self.operation = operation
        self.hint = hint
        self.libbpf_log = "".join(libbpf_log)
        self.verifier_log = _extract_verifier_log(self.libbpf_log)

    def __str__(self) -> str:
        name = errno_codes.errorcode.get(self.errno or 0, str(self.errno))
        text = f"{self.operation}: {self.strerror} ({name})"
        if self.hint:
            text += f"; {self.hint}"
        if self.libbpf_log:
            text += "\nlibbpf said:\n" + self.libbpf_log.rstrip("\n")
        return text


def _extract_verifier_log(text: str) -> str | None:
    begin = text.find("-- BEGIN PROG LOAD LOG --")
    if begin < 0:
        return None
    begin = text.index("\n", begin) + 1
    end = text.find("-- END PROG LOAD LOG --", begin)
    return text[begin:] if end < 0 else text[begin:end]


def _errno_of(result: int) -> int:
    """libbpf 1.x returns -errno; fall back on errno for NULL-returning calls."""
    if result < 0:
        return -result
    return ctypes.get_errno() or errno_codes.EIO


def _interface_label(ifindex: int) -> str:
    try:
        return f"{socket.if_indextoname(ifindex)} (ifindex {ifindex})"
    except OSError:
        return f"ifindex {ifindex}"
