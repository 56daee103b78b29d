"""Zero-downtime serving: a process supervisor for uvicorn workers (``fournines serve``).

The supervisor binds the listening sockets once and runs N uvicorn workers on
them; it replaces workers new first on SIGHUP (a deploy is a SIGHUP), restarts
crashed ones with backoff, kills hung ones, and drains all of them on SIGTERM.
It sends :class:`WorkerExited`, :class:`WorkersReloaded` and
:class:`SupervisorUpgraded` events to the process-wide listeners
(:func:`fournines.add_listener`).
uvicorn stays the HTTP engine; fournines owns the processes. See
:mod:`fournines.serve.supervisor` for the whole lifecycle.
"""

from .._events import SupervisorUpgraded, WorkerExited, WorkersReloaded
from .control import ControlError, reload, status
from .sockets import bind_sockets, systemd_sockets
from .supervisor import ServeError, run

__all__ = ["ControlError", "ServeError", "SupervisorUpgraded", "WorkerExited",
           "WorkersReloaded", "bind_sockets", "reload", "run", "status", "systemd_sockets"]
