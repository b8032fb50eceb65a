"""The configuration a daemon starts with: the file (or environment), or the state the
API saved, with the keys the start and the environment fix."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Final

from rusty_rail import config as config_module
from rusty_rail.config import Config, ConfigError, validate_as
from rusty_rail.control import state_file
from rusty_rail.control.errors import StartupError
from rusty_rail.control.options import DaemonOptions

log = logging.getLogger("rusty_rail.daemon")

#: Keys the API cannot change: the maps and the attachment are made with them at start.
RESTART_KEYS: Final[Mapping[str, str]] = {
    "device": "the interface is chosen at start; restart the daemon to change it",
    "xdp_mode": "the program is attached in this mode at start; detach and restart to change it",
    "conntrack_size": "the connection table is sized at start; detach and restart to change it",
    "bgp": "the BGP speaker is set up at start; restart the daemon to change it",
}


def fixed_keys(environ: Mapping[str, str]) -> dict[str, str]:
    """The configuration keys the API may not change, and why: the restart-only ones and
    those the environment (or the command line) sets for this node."""
    fixed = dict(RESTART_KEYS)
    for variable, key in config_module.ENV_OVERRIDES.items():
        if variable in environ:
            fixed.setdefault(
                key, f"set by {variable} in the daemon's environment (or its command line)"
            )
    return fixed


def desired_at_start(base: Config, saved: Config, fixed: Iterable[str], source: str) -> Config:
    """The saved state, with the keys the environment or the start fixes taken from ``base``
    (the configuration file and environment as read now)."""
    data = {name: getattr(saved, name) for name in Config.model_fields}
    for name in fixed:
        data[name] = getattr(base, name)
    return validate_as(Config, data, source)


def startup_config(
    environ: Mapping[str, str], options: DaemonOptions
) -> tuple[Config, dict[str, str], int]:
    """The configuration to start with: the file (or environment), or the API's saved state
    with the keys the environment and the start fix taken from the file. Also the fixed
    keys and the generation to continue from."""
    base = config_module.load(environ, options.config_path)
    fixed = fixed_keys(environ)
    path = options.state_file
    if path is None:
        return base, fixed, 0
    if options.reset_state:
        # Removed only once the start has succeeded (start_daemon): a failed start keeps it.
        return base, fixed, 0
    if path.parent.is_dir():
        for leftover in state_file.leftover_temporaries(path.parent):
            with contextlib.suppress(OSError):
                leftover.unlink()
    try:
        saved = state_file.read(path)
    except state_file.StateFileError as error:
        raise StartupError(str(error)) from error
    if saved is None:
        return base, fixed, 0
    try:
        config = desired_at_start(base, saved.config, fixed, f"{path} (saved by the API)")
    except ConfigError as error:
        raise StartupError(
            f"{error}\nremove {path}, or start with --reset-state, to start from the "
            "configuration file instead"
        ) from error
    log.info(
        "desired state: %s, saved by the API at %s (generation %d); it replaces the VIPs and "
        "backends of the configuration file or environment; --reset-state or SIGHUP goes "
        "back to the file",
        path,
        saved.written_at,
        saved.generation,
    )
    return config, fixed, saved.generation
