"""A started Daemon serving on a thread of its own: for the tests and benches that drive
it over HTTP from the same process."""

from __future__ import annotations

import asyncio
import threading

from rusty_rail.control.daemon import AppFactory, Daemon


class BackgroundDaemon:
    """A started Daemon serving on a thread of its own, with its API: for tests and benches
    that drive it over HTTP from the same process. The thread is made where this object is
    started, so it lives in the caller's network namespace."""

    def __init__(self, daemon: Daemon, app_factory: AppFactory | None) -> None:
        self.daemon = daemon
        self.app_factory = app_factory
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 30) -> None:
        self._thread = threading.Thread(target=self._serve, name="rusty-rail-daemon")
        self._thread.start()
        if not self.daemon.wait_serving(timeout):
            raise TimeoutError("the daemon did not start serving")
        if self._error is not None:
            raise self._error

    def _serve(self) -> None:
        try:
            asyncio.run(self.daemon.serve({}, app_factory=self.app_factory, handle_signals=False))
        except BaseException as error:
            self._error = error

    @property
    def url(self) -> str:
        assert self.daemon.api_url is not None
        return self.daemon.api_url

    def stop(self) -> None:
        self.daemon.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._error is not None:
            raise self._error
