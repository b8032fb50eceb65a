"""Why the daemon refuses a start or a change."""

from __future__ import annotations


class StartupError(RuntimeError):
    """The daemon cannot start with this configuration or on this host; nothing was changed."""


class PersistError(RuntimeError):
    """A change could not be saved to the state file; it was not applied."""


class ApplyError(RuntimeError):
    """A change was saved but writing it into the maps failed; the daemon retries it."""
