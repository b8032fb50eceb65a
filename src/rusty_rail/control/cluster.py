"""A node of a cluster whose desired state lives in etcd (``run --store``; docs/cluster.md).

One key, ``PREFIX/config``, holds the cluster-wide part of the configuration as one JSON
document (every key but the node's own, fingerprint.NODE_KEYS): each etcd revision of it is a
whole desired state, so a node never applies half of one. Every node:

- follows the key (a watch on the daemon's loop) and applies each revision through
  Controller.change (source "store"), under the daemon's change lock, like any change;
- writes through its API with a compare-and-swap on the key's mod_revision (StoreSync.write);
- registers itself under ``PREFIX/nodes/NAME`` bound to a lease it keeps alive; the keep-alive
  is also how it notices the store is gone (StoreSync.status) and back.

What runs where: ``follow()`` runs on the loop; the etcd calls it makes and every apply run on
worker threads (the calls block for at most store.CALL_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from rusty_rail.config import Config, ConfigError, Problem, validate_as
from rusty_rail.control import state_file
from rusty_rail.control.controller import SOURCE_API
from rusty_rail.control.errors import ApplyError, StartupError
from rusty_rail.control.fingerprint import NODE_KEYS
from rusty_rail.control.plan import PlanError
from rusty_rail.control.store import (
    Compacted,
    EtcdClient,
    StoreAddress,
    StoreError,
    StoreUnavailable,
    Value,
)
from rusty_rail.timestamps import rfc3339

if TYPE_CHECKING:
    from rusty_rail.api import schemas
    from rusty_rail.control.controller import ChangeResult, Controller
    from rusty_rail.control.daemon import Daemon
    from rusty_rail.control.options import DaemonOptions

log = logging.getLogger("rusty_rail.cluster")

SOURCE_STORE: Final = "store"
#: The node's registration lease: renewed every KEEPALIVE_SECONDS, which is also how often
#: the node checks that the store answers.
LEASE_TTL: Final = 5
KEEPALIVE_SECONDS: Final = 1.0
#: A write whose compare-and-swap lost to another node's write is computed again on the
#: newer state this many times before it is refused with 409.
WRITE_ATTEMPTS: Final = 5
_SAVED_SOURCE = re.compile(r"^store revision (\d+)$")


class StoreWriteError(RuntimeError):
    """An API write the store could not take: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def shared_document(config: Config) -> bytes:
    """The value of PREFIX/config for ``config``: its cluster-wide keys, as JSON."""
    data = config.model_dump(mode="json", exclude=set(NODE_KEYS))
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def node_config(data: bytes | None, local: Config, where: str) -> Config:
    """The configuration a stored value makes on this node: the value's keys with the node's
    own keys (NODE_KEYS) from ``local``. Raises ConfigError naming the field."""
    if data is None:
        raise ConfigError([Problem((), "the key was deleted; a node keeps its last state")], where)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise ConfigError([Problem((), f"not JSON: {error}")], where) from None
    if not isinstance(document, dict):
        raise ConfigError([Problem((), "must be a JSON object", document)], where)
    own = [
        Problem((name,), "is each node's own key (from its configuration file); not in the store")
        for name in NODE_KEYS
        if name in document
    ]
    if own:
        raise ConfigError(own, where)
    for name in NODE_KEYS:
        document[name] = getattr(local, name)
    return validate_as(Config, document, where)


@dataclass
class Rejected:
    """A revision of the store this node refused, and why."""

    revision: int
    error: str


class StoreSync:
    """This node's view of the store: what it applied, what it refused, whether it answers."""

    def __init__(self, address: StoreAddress, node_name: str, client: EtcdClient | None = None):
        self.address = address
        self.node_name = node_name
        self.client = client or EtcdClient(address)
        #: The mod_revision of PREFIX/config whose state is in the maps (0: none yet).
        self.applied_revision = 0
        #: The newest mod_revision of PREFIX/config this node has seen (applied or refused).
        self.seen_revision = 0
        self.rejected: Rejected | None = None
        #: What a write compares the key's mod_revision with: the last seen (0: no key).
        self.compare_revision = 0
        self._registered = False
        self.reachable = False
        self.unreachable_since: float | None = None
        self.error: str | None = None
        self.lease: int | None = None
        self._watch: asyncio.Task[None] | None = None

    # --- start ---------------------------------------------------------------------------

    def initial(self, local: Config, saved_source: str | None) -> tuple[Config | None, str]:
        """At start: the stored configuration for this node, or None to start from ``local``
        (the store is empty: the node seeds it; or it is unreachable: the node starts from
        its saved state, ``local``). Also a line for the log. A stored value this node
        refuses stops the start (StartupError naming the field)."""
        if saved_source is not None and (match := _SAVED_SOURCE.match(saved_source)):
            self.applied_revision = self.seen_revision = int(match.group(1))
            self.compare_revision = self.applied_revision
        try:
            value = self.client.get(self.address.config_key)
        except StoreError as error:
            self._lost(str(error))
            return None, (
                f"{error}: starting from the last saved state (store revision "
                f"{self.applied_revision or 'unknown'}); the node catches up when etcd answers"
            )
        self._found()
        if value.data is None:
            ok, now = self.client.compare_and_put(
                self.address.config_key, shared_document(local), 0
            )
            if ok:
                self.applied_revision = self.seen_revision = now.mod_revision
                self.compare_revision = now.mod_revision
                return None, f"the store was empty: seeded it at revision {now.mod_revision}"
            value = now  # another node seeded it first
        try:
            config = node_config(value.data, local, self._where(value.mod_revision))
        except ConfigError as error:
            raise StartupError(f"{error}\nfix the value in etcd, then start again") from error
        self.applied_revision = self.seen_revision = value.mod_revision
        self.compare_revision = value.mod_revision
        return config, f"desired state from {self.address} at revision {value.mod_revision}"

    def _where(self, revision: int) -> str:
        return f"etcd {self.address.config_key} at revision {revision}"

    # --- applying ------------------------------------------------------------------------

    def apply(self, node: Controller, value: Value) -> ChangeResult | None:
        """Apply one stored revision (the caller holds the change lock); a refused one is
        recorded and logged, and the node keeps its state. None when nothing was applied."""
        revision = value.mod_revision
        if revision <= self.applied_revision:
            return None
        self.seen_revision = max(self.seen_revision, revision)
        # A deleted key has no mod_revision: a write then compares with 0 (creates it).
        self.compare_revision = 0 if value.data is None else revision
        result = None
        try:
            config = node_config(value.data, node.config, self._where(revision))
            result = node.change(
                config,
                SOURCE_STORE,
                actor=f"etcd revision {revision}",
                saved_as=self.saved_as(revision),
            )
        except ApplyError:
            pass  # the desired state is the new one now; the daemon's retry tick applies it
        except (ConfigError, PlanError, StartupError, ValueError) as error:
            self.rejected = Rejected(revision, str(error))
            log.error("refused store revision %d, keeping revision %d: %s",
                      revision, self.applied_revision, error)  # fmt: skip
            return None
        self.applied_revision, self.rejected = revision, None
        return result

    @staticmethod
    def saved_as(revision: int) -> str:
        """The state file's source for a state from the store (read back at start)."""
        return f"store revision {revision}"

    def write(
        self,
        node: Controller,
        make: Callable[[Config], tuple[Config, Any]],
        actor: str,
    ) -> tuple[Config, Any, ChangeResult]:
        """An API write (the caller holds the change lock): ``make`` computes the new
        configuration from the running one (and raises the route's own errors, If-Match's
        412 included); it is put with a compare-and-swap on the revision the running state
        came from. When another node's write got there first, that revision is applied here
        and ``make`` runs again on it: writes that do not conflict are all kept; a write that
        no longer fits gets its own error. Answers once this node has applied it."""
        for _ in range(WRITE_ATTEMPTS):
            current = node.config
            config, extra = make(current)
            if config == current:
                return config, extra, node.change(config, SOURCE_API)
            node.check_capacity(config)  # PlanError: refused before it reaches the store
            try:
                ok, now = self.client.compare_and_put(
                    self.address.config_key, shared_document(config), self.compare_revision
                )
            except StoreUnavailable as error:
                self._lost(str(error))
                later = (
                    "etcd may still take it if it received it: then every node applies it when "
                    "etcd returns, and only over the state it was computed from (the compare "
                    f"on revision {self.compare_revision}); read the state again before retrying"
                    if error.maybe_sent
                    else "nothing was changed; retry when etcd answers"
                )
                raise StoreWriteError(
                    503,
                    f"the store is unreachable ({error}): the write is not applied; the node "
                    f"keeps forwarding with store revision {self.applied_revision}; {later}",
                ) from None
            except StoreError as error:
                raise StoreWriteError(503, f"the store refused the write: {error}") from None
            self._found()
            if ok:
                return config, extra, self._apply_written(node, config, now.mod_revision, actor)
            log.info("store revision %d came first: applying it, then the write again",
                     now.mod_revision)  # fmt: skip
            self.apply(node, now)
            self.seen_revision = max(self.seen_revision, now.mod_revision)
            self.compare_revision = now.mod_revision  # 0 when the key is gone
        raise StoreWriteError(
            409, f"other writes kept coming first ({WRITE_ATTEMPTS} tries); retry"
        )

    def _apply_written(
        self, node: Controller, config: Config, revision: int, actor: str
    ) -> ChangeResult:
        """Apply what this node just put at ``revision``. What the plan refuses now is in the
        store already: recorded as refused (as every node will) and answered 422."""
        self.seen_revision = self.compare_revision = revision
        try:
            result = node.change(config, SOURCE_API, actor=actor, saved_as=self.saved_as(revision))
        except ApplyError:
            self.applied_revision, self.rejected = revision, None  # the retry tick applies it
            raise
        except (PlanError, StartupError, ValueError) as error:
            self.rejected = Rejected(revision, str(error))
            raise StoreWriteError(
                422,
                f"stored as revision {revision}, but the data plane cannot hold it: {error}; "
                f"the nodes keep revision {self.applied_revision}: write a state that fits",
            ) from error
        self.applied_revision, self.rejected = revision, None
        return result

    # --- following -----------------------------------------------------------------------

    async def follow(self, daemon: Daemon) -> None:
        """Until cancelled: keep the registration alive (and with it, know whether the store
        answers), read the key whole and watch it whenever the store is reachable."""
        while True:
            try:
                await asyncio.to_thread(self._keep_registered, daemon)
            except StoreError as error:
                self._lost(str(error))
                if self._watch is not None:
                    self._watch.cancel()
            else:
                self._found()
                if self._watch is None or self._watch.done():
                    self._watch = asyncio.get_running_loop().create_task(self._catch_up(daemon))
            await asyncio.sleep(KEEPALIVE_SECONDS)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        if self.lease is not None:
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(self.client.revoke, self.lease)
            self.lease = None

    async def _catch_up(self, daemon: Daemon) -> None:
        """Read the key whole (which also covers revisions compacted while away), apply it,
        then watch from the revision after it."""
        try:
            value = await asyncio.to_thread(self.client.get, self.address.config_key)
            if value.mod_revision > self.applied_revision or value.data is None:
                await daemon.exclusive(lambda: self.apply(daemon, value))
            async for batch in self.client.watch(self.address.config_key, value.revision + 1):
                if not batch:
                    continue
                revision, data = batch[-1]  # the newest is whole: the ones before it are moot
                newest = Value(data, revision, revision)
                await daemon.exclusive(functools.partial(self.apply, daemon, newest))
        except Compacted as error:
            log.info("%s: reading the key whole again", error)
        except StoreError as error:
            self._lost(str(error))
        except Exception:  # an answer not as documented: read whole again next round
            log.exception("following the store failed; reading it again")

    def _keep_registered(self, daemon: Daemon) -> None:
        if self.lease is not None and self._registered and self.client.keep_alive(self.lease) > 0:
            return
        self._registered = False
        self.lease = self.client.grant(LEASE_TTL)
        registration = {"name": self.node_name, "api": daemon.api_url, "device": daemon.device}
        self.client.put(
            self.address.nodes_prefix + self.node_name,
            json.dumps(registration).encode(),
            lease=self.lease,
        )
        self._registered = True

    def _lost(self, error: str) -> None:
        if self.reachable or self.error is None:
            log.warning("store %s unreachable: %s; forwarding with revision %d, writes refused",
                        self.address, error, self.applied_revision)  # fmt: skip
        if self.unreachable_since is None:
            self.unreachable_since = time.time()
        self.reachable, self.error = False, error

    def _found(self) -> None:
        if not self.reachable and self.unreachable_since is not None:
            log.info("store %s answers again", self.address)
        self.reachable, self.error, self.unreachable_since = True, None, None

    def no_reload(self) -> StartupError:
        """Why SIGHUP does not read the configuration file into the running state."""
        return StartupError(
            f"the desired state is in {self.address} (run --store): change it through the API "
            "of any node; the file's own keys (device, lb_address, ...) take effect at restart"
        )

    # --- what the node reports -----------------------------------------------------------

    def warnings(self) -> list[str]:
        """/healthz warnings: the node forwards with its last state meanwhile."""
        out = []
        if not self.reachable:
            out.append(
                f"the store {self.address} is unreachable ({self.error}): forwarding with "
                f"store revision {self.applied_revision}; writes are refused"
            )
        if self.rejected is not None:
            out.append(
                f"store revision {self.rejected.revision} was refused: {self.rejected.error}"
            )
        return out

    def status(self) -> schemas.StoreHealth:
        """/healthz's ``store``."""
        return {
            "address": str(self.address),
            "node": self.node_name,
            "reachable": self.reachable,
            "error": self.error,
            "unreachable_since": None
            if self.unreachable_since is None
            else rfc3339(self.unreachable_since),
            "revision": self.applied_revision,
            "seen_revision": self.seen_revision,
            "rejected": None
            if self.rejected is None
            else {"revision": self.rejected.revision, "error": self.rejected.error},
        }


def join_store(
    config: Config, options: DaemonOptions, generation: int = 0
) -> tuple[Config, StoreSync]:
    """At start, with --store: the configuration to start with (the stored one, or
    ``config``, the saved state or the file, when the store is empty or unreachable) and the
    node's StoreSync. Raises StartupError when the stored value is one this node refuses."""
    assert options.store is not None
    name = options.node_name or f"{socket.gethostname()}-{config.device}"
    sync = StoreSync(options.store, name)
    saved_source = None
    if options.state_file is not None and not options.reset_state:
        with contextlib.suppress(state_file.StateFileError):
            saved = state_file.read(options.state_file)
            saved_source = None if saved is None else saved.source
    stored, line = sync.initial(config, saved_source)
    (log.info if sync.reachable else log.warning)("store %s: %s", options.store, line)
    config = config if stored is None else stored
    if sync.reachable and options.state_file is not None:
        # What a start while etcd is down begins from (the state file is the last good state).
        try:
            state_file.write(
                options.state_file,
                config,
                generation=generation,
                source=sync.saved_as(sync.applied_revision),
            )
        except OSError as error:
            log.warning("cannot save the store's state to %s: %s", options.state_file, error)
    return config, sync
