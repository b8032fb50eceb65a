"""The API's write credential on one host: a bearer token in a file only root can read.

`rusty-rail run` serves writes only with the token (reads need none). Unless it is given one
(``--api-token-file FILE`` or ``$RUSTY_RAIL_API_TOKEN``), it uses the host's token file,
DEFAULT_TOKEN_FILE, and makes it at its first start: a random token, mode 0600, owned by the
user running it (root). `rusty-rail ctl` reads the same file when it is given no token, so
root needs no flags, and a user who cannot read the file can change nothing (docs/api.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_TOKEN_FILE",
    "TokenFileError",
    "local_token",
    "token_file",
]

#: The host's API token: shared by every daemon on the host (one per interface), like the
#: trust domain it guards (root).
DEFAULT_TOKEN_FILE: Final = Path("/run/rusty-rail/api-token")
#: Bytes of randomness in a generated token (hex-encoded: 64 characters).
TOKEN_BYTES: Final = 32


class TokenFileError(ValueError):
    """A token file that cannot be used, with what to do about it."""


def token_file(path: Path, *, create: bool) -> str:
    """The token in ``path`` (its first line). With ``create``, a missing file is made with a
    fresh token (mode 0600, exclusively: two daemons starting at once agree on one token).

    Refused: an empty file, one that group or others may read or write, one owned by
    another user than this process's (they could read or replace the credential)."""
    if create:
        with contextlib.suppress(FileExistsError):
            _create(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise TokenFileError(f"the token file {path} is a symbolic link") from None
        raise TokenFileError(f"cannot read the token file {path}: {error.strerror}") from None
    with os.fdopen(fd, encoding="utf-8") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f"the token file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise TokenFileError(
                f"the token file {path} can be read or written by group or others (mode "
                f"{info.st_mode & 0o777:o}): chmod 600 it"
            )
        if info.st_uid != os.geteuid():
            raise TokenFileError(
                f"the token file {path} belongs to uid {info.st_uid}, not to this user "
                f"(uid {os.geteuid()}): it could be read or replaced by them"
            )
        token = handle.readline().strip()
    if not token:
        raise TokenFileError(f"the token file {path} is empty")
    return token


def _create(path: Path) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    token = secrets.token_hex(TOKEN_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def local_token(path: Path = DEFAULT_TOKEN_FILE) -> str | None:
    """What a client on this host uses when it is given no token: the host's token file, when
    this user may read it; else None (its writes are then refused with 401)."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
