"""What libbpf prints: formatted in C (rusty_rail/_libbpf_print.c, which handles any ABI's
va_list), then logged, or collected for the LibbpfError of the operation that printed it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rusty_rail.dataplane.libbpf._ffi import _lib, log

_LIBBPF_WARN, _LIBBPF_INFO, _LIBBPF_DEBUG = 0, 1, 2
_FORMATTER = "rusty_rail._libbpf_print"

#: void (*)(int level, const char *line): one formatted message.
_LINE_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p)

_capture = threading.local()


def _load_formatter() -> ctypes.CDLL:
    # A plain C library built as an extension module (setup.py): the import system finds the
    # build for this interpreter, ctypes loads it.
    spec = importlib.util.find_spec(_FORMATTER)
    try:
        if spec is None or spec.origin is None:
            raise OSError(f"no {_FORMATTER} extension is built")
        return ctypes.CDLL(spec.origin)
    except OSError as error:
        raise ImportError(
            f"rusty_rail.dataplane needs its libbpf message formatter ({_FORMATTER}): "
            f"{error}; run scripts/setup"
        ) from error


def _on_libbpf_message(level: int, line: bytes | None) -> None:
    try:
        if line is None:
            return
        if level == _LIBBPF_DEBUG:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("libbpf: %s", line.decode("utf-8", errors="replace").rstrip("\n"))
            return
        message = line.decode("utf-8", errors="replace")
        sink: list[str] | None = getattr(_capture, "messages", None)
        if sink is not None:
            sink.append(message)  # becomes part of the error, if the operation fails
        elif level == _LIBBPF_WARN:
            log.warning("libbpf: %s", message.rstrip("\n"))
        else:
            log.info("libbpf: %s", message.rstrip("\n"))
    except Exception:  # an exception must not unwind into C
        log.exception("libbpf print callback failed")


_formatter = _load_formatter()
_install = _formatter.rr_libbpf_print_install
_install.restype = ctypes.c_int
_install.argtypes = [ctypes.c_void_p, _LINE_FN]
# libbpf calls this C function pointer for as long as the process runs: it must stay alive.
_line_callback = _LINE_FN(_on_libbpf_message)
if _install(ctypes.cast(_lib.libbpf_set_print, ctypes.c_void_p), _line_callback) != 0:
    raise ImportError("rusty_rail.dataplane cannot install its libbpf print callback")


@contextmanager
def _captured_libbpf_messages() -> Iterator[list[str]]:
    """Collect what libbpf prints during the block (this thread only) instead of logging it."""
    previous: list[str] | None = getattr(_capture, "messages", None)
    messages: list[str] = []
    _capture.messages = messages
    try:
        yield messages
    finally:
        _capture.messages = previous
        if previous is not None:
            previous.extend(messages)
