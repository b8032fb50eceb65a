"""The control core: the desired state, planned into tables and written to the data plane.

Where each part lives:
- plan.py: the pure plan (configuration -> allocation, Maglev tables, map operations);
  apply.py writes its operations; state_file.py saves the desired state the API made.
- controller.py: one balancer and every change to it (synchronous, one caller at a time);
  bringup.py its start sequence; startup.py the configuration it starts with; nexthops.py,
  fingerprint.py, errors.py, options.py.
- daemon.py: the Controller served from one asyncio loop; connections.py bounds the API's
  connections; background.py runs a daemon on a thread for tests and benches.
- cluster.py: with `run --store`, the desired state shared through etcd (store.py, its client).
- health.py (the verdicts), checks.py (probes), monitor.py (both on the loop, with the ICMP
  ring buffer), events.py.

What runs where: one asyncio loop runs the API handlers, the ticks, the signal handlers, the
health checks and the ring-buffer reader. Every change and every read that must see one
consistent state takes the daemon's asyncio lock and then runs on a worker thread
(asyncio.to_thread), because map writes and table builds block. Code on worker threads touches
the monitor only through loop.call_soon_threadsafe; the event log (events.py) is read from
worker threads too, so it has a threading lock of its own.
"""
