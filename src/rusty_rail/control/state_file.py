"""The desired state written through the API, kept on disk so that it survives a restart: one
JSON file, replaced atomically (temporary file, fsync, rename, fsync of the directory).

A reader therefore finds the previous state or the new one, never a mix, whenever the writer
stops (a crash, a kill, a power cut after the rename is durable). docs/api.md has the rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from rusty_rail.config import Config, ConfigError, validate_as

FORMAT: Final = "rusty-rail desired state v1"
#: Where the state file goes when there is no configuration file to put it next to.
STATE_DIRECTORY: Final = Path("/var/lib/rusty-rail")
_TEMP_PREFIX = ".rusty-rail-state-"


class StateFileError(RuntimeError):
    """The state file exists but cannot be used; the message says what to do."""


@dataclass(frozen=True)
class SavedState:
    """What a state file holds: the desired configuration and when and how it was written."""

    config: Config
    generation: int
    written_at: str
    source: str


def default_path(config_path: str | os.PathLike[str] | None, device: str) -> Path:
    """Next to the configuration file (``rusty-rail.toml`` -> ``rusty-rail.state.json``), or
    ``/var/lib/rusty-rail/<device>.state.json`` when the configuration is the environment."""
    if config_path is not None:
        path = Path(config_path)
        return path.with_name(f"{path.stem}.state.json")
    return STATE_DIRECTORY / f"{device}.state.json"


def _reset_hint(path: Path) -> str:
    return (
        f"remove {path}, or start with --reset-state, to start from the configuration file "
        "(or environment) instead"
    )


def read(path: Path) -> SavedState | None:
    """The state saved in ``path``; None when there is no file. Raises StateFileError when the
    file cannot be read or is not a valid state (the daemon never writes such a file: it was
    edited, or written by another version)."""
    try:
        check_trusted(path)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise StateFileError(f"cannot read the state file {path}: {error}") from error
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise StateFileError(
            f"the state file {path} is not valid JSON (line {error.lineno}, column "
            f"{error.colno}: {error.msg}); {_reset_hint(path)}"
        ) from error
    except RecursionError:
        raise StateFileError(
            f"the state file {path} is nested too deeply to be a state the daemon wrote; "
            f"{_reset_hint(path)}"
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise StateFileError(
            f"the state file {path} is not a {FORMAT!r} document (format: {found!r}); "
            f"{_reset_hint(path)}"
        )
    generation = document.get("generation")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise StateFileError(f"the state file {path} has no valid generation; {_reset_hint(path)}")
    try:
        config = validate_as(Config, document.get("config"), str(path))
    except ConfigError as error:
        raise StateFileError(f"{error}\n{_reset_hint(path)}") from error
    return SavedState(
        config=config,
        generation=generation,
        written_at=str(document.get("written_at", "")),
        source=str(document.get("source", "")),
    )


def check_trusted(path: Path) -> None:
    """Raise StateFileError unless only root (or the daemon's own user) can have written
    ``path``: the file is owned by one of them, not writable by group or others, and its
    directory is not writable by others unless sticky. The state file decides where traffic
    goes. FileNotFoundError when there is no file."""
    info = path.stat()
    owners = {0, os.geteuid()}
    if info.st_uid not in owners:
        raise StateFileError(
            f"the state file {path} is owned by uid {info.st_uid}, not by root: it is not "
            f"loaded; {_reset_hint(path)}"
        )
    if info.st_mode & 0o022:
        raise StateFileError(
            f"the state file {path} can be written by group or others (mode "
            f"{info.st_mode & 0o777:o}): it is not loaded; chmod go-w it, or "
            f"{_reset_hint(path)}"
        )
    directory = path.parent.stat()
    if directory.st_mode & 0o002 and not directory.st_mode & 0o1000:
        raise StateFileError(
            f"the state file {path} is in a directory anyone can write to ({path.parent}): it "
            "is not loaded; keep it in a directory only root can write (--state-file)"
        )


def encode(config: Config, *, generation: int, source: str) -> bytes:
    """The file's content for ``config``."""
    head = {
        "format": FORMAT,
        "generation": generation,
        "written_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "source": source,
    }
    # pydantic writes the configuration (thousands of backends) in a millisecond; the json
    # module's indenting encoder would take ten.
    opening = json.dumps(head, indent=1).removesuffix("\n}")
    return f'{opening},\n "config": {config.model_dump_json(indent=1)}\n}}\n'.encode()


def write(path: Path, config: Config, *, generation: int, source: str) -> None:
    """Replace ``path`` with ``config``, atomically and durably. Raises OSError (the old file,
    if any, is then untouched)."""
    write_bytes(path, encode(config, generation=generation, source=source))


def write_bytes(path: Path, content: bytes) -> None:
    """The atomic replacement itself: a temporary file in the same directory (so the rename
    stays within one file system), its data synced, renamed over ``path``, then the directory
    synced so that the rename itself survives a power cut."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_directory(directory)


def remove(path: Path) -> bool:
    """Delete the state file (the configuration file is the desired state again); False when
    there was none."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _sync_directory(path.parent)
    return True


def leftover_temporaries(directory: Path) -> list[Path]:
    """Temporary files of writes that were interrupted (harmless: the state file itself is
    whole); the daemon removes them at start."""
    return sorted(directory.glob(f"{_TEMP_PREFIX}*"))


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
