"""The HTTP/1.1 connection layer of ``edgequery serve``: slow clients, and too many of them.

uvicorn's h11 protocol times out only *idle* keep-alive connections (``timeout_keep_alive``):
a client that sends part of its headers, or part of its body, and then stalls keeps its
connection — a file descriptor — for ever, and a few hundred such clients exhaust the
process's descriptors so that nobody else can connect (not even ``/healthz``).  Its
``limit_concurrency`` does not help: it still accepts the connection, and answers a
plain-text 503 only once a whole request has arrived.  :class:`GuardedH11Protocol` (the
h11 protocol with three additions, all set by :class:`~.guard.Limits`) closes that hole:

* **header timeout** — a request's headers must be complete ``header_timeout`` seconds
  after the connection opened (or the previous response ended), else 408 and close;
* **body timeout** — its body must be complete ``body_timeout`` seconds after its
  headers, else 408 and close (the handler waiting for it sees a disconnect);
* **connection limit** — at most ``max_connections`` connections are open.  One more
  first evicts the connection that has been *stalled* longest (waiting for headers — an
  idle keep-alive connection is one — or for a body), so a flood of slow clients cannot
  lock honest ones out; when every connection is busy being answered, the newcomer gets a
  503 and is closed.  The descriptors this takes (:func:`descriptors_needed`) are checked,
  and the soft limit raised if need be, at start-up (:func:`ensure_descriptors`).

Refusals at this layer are JSON ``{"problem", "fix"}`` like every other (:func:`.problems.raw_problem`),
including h11's own 400 for malformed HTTP or headers above ``max_header_bytes``.
"""

from __future__ import annotations

import logging
import resource

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import EdgeQueryError
from .guard import Limits
from .problems import raw_problem

log = logging.getLogger(__name__)

SPARE_DESCRIPTORS = 64  # the process's own files (model, SQLite + WAL, faiss, libraries) on top of connections
ACCEPT_BURSTS = 4       # accepted sockets not yet seen by the protocol, in backlogs (see descriptors_needed)


def protocol_class(limits: Limits) -> type[GuardedH11Protocol]:
    """The protocol class to hand to uvicorn (``http=``) for a server with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def uvicorn_options(limits: Limits) -> dict:
    """uvicorn.run options that go with :class:`GuardedH11Protocol`."""
    return {"http": protocol_class(limits), "ws": "none", "timeout_keep_alive": limits.keep_alive_timeout,
            "h11_max_incomplete_event_size": limits.max_header_bytes, "server_header": False,
            "backlog": backlog(limits.max_connections)}


def backlog(max_connections: int) -> int:
    """The listen backlog, which is also how many sockets asyncio accepts in one go."""
    return max(8, max_connections // 4)


def descriptors_needed(max_connections: int) -> int:
    """File descriptors a server with this connection limit may hold at once.

    asyncio accepts up to :func:`backlog` sockets per event-loop turn, and a socket reaches
    :class:`GuardedH11Protocol` (which may evict another) two turns later, whose close takes
    one more: up to :data:`ACCEPT_BURSTS` bursts are in flight besides ``max_connections``
    open connections; plus the process's own files.
    """
    return max_connections + ACCEPT_BURSTS * backlog(max_connections) + SPARE_DESCRIPTORS


def ensure_descriptors(max_connections: int) -> None:
    """Make sure the process may open the sockets of ``max_connections`` besides its own files."""
    need = descriptors_needed(max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        log.info(f"raised the open-file limit from {soft} to {need} for --max-connections {max_connections}")
        return
    fits = max(1, (hard - SPARE_DESCRIPTORS) // 2)
    raise EdgeQueryError(f"--max-connections {max_connections} needs about {need} file descriptors, but this "
                         f"process may open only {hard}",
                         f"pass --max-connections {fits} or less, or raise the limit (`ulimit -n`)")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header/body timeouts and a connection limit (see the module docstring)."""

    limits: Limits = Limits()

    # ------------------------------------------------------------------ uvicorn's hooks

    def connection_made(self, transport) -> None:
        self._timer = None
        self._waiting: str | None = None      # "headers" | "body" | None (not stalled on the client)
        self._stalled_since = 0.0
        super().connection_made(transport)
        open_now = sum(1 for c in self.connections if not c.transport.is_closing())
        if open_now > self.limits.max_connections and not self._evict_one():
            log.warning(f"refused a connection: all {self.limits.max_connections} connections are busy")
            self._refuse(503, f"the server already has {self.limits.max_connections} open connections, all busy",
                         "retry in a moment (the operator can raise --max-connections)")
            return
        self._wait_for("headers")

    def connection_lost(self, exc) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start the next, pipelined, request
        if not self.transport.is_closing():
            self._wait_for("headers")
            self._track()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"malformed HTTP request ({msg.rstrip('.')}; headers are limited to "
                          f"{self.limits.max_header_bytes} bytes)", "send a well-formed HTTP/1.1 request")

    # ------------------------------------------------------------------ the additions

    def _wait_for(self, what: str) -> None:
        self._stop_waiting()
        seconds = self.limits.header_timeout if what == "headers" else self.limits.body_timeout
        self._waiting, self._stalled_since = what, self.loop.time()
        self._timer = self.loop.call_later(seconds, self._timed_out, what)

    def _stop_waiting(self) -> None:
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()
        self._timer, self._waiting = None, None

    def _track(self) -> None:
        """Follow the client's side of the request: headers done -> wait for the body -> done."""
        state = self.conn.their_state
        if self._waiting == "headers" and state is h11.SEND_BODY:
            self._wait_for("body")
        elif self._waiting == "headers" and state is not h11.IDLE:
            self._stop_waiting()
        elif self._waiting == "body" and state is not h11.SEND_BODY:
            self._stop_waiting()

    def _timed_out(self, what: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        limit = self.limits.header_timeout if what == "headers" else self.limits.body_timeout
        cycle = self.cycle if what == "body" else None
        if cycle is not None and cycle.response_started:
            self.transport.close()  # an answer is under way: nothing more can be said
            return
        if cycle is not None:  # the handler waiting for the body sees a disconnect; its answer is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self._refuse(408, f"the request's {what} did not arrive within {limit:g} s",
                     "send the whole request promptly (the operator sets --header-timeout / --body-timeout)")

    def _evict_one(self) -> bool:
        """Close the connection stalled longest on its client (not this one); False if there is none."""
        stalled = [c for c in self.connections if c is not self and getattr(c, "_waiting", None)
                   and not c.transport.is_closing()]
        if not stalled:
            return False
        victim = min(stalled, key=lambda c: c._stalled_since)
        log.debug(f"evicted a connection stalled for {self.loop.time() - victim._stalled_since:.1f} s "
                  f"(waiting for its {victim._waiting})")
        if victim.cycle is not None and victim._waiting == "body":
            victim.cycle.disconnected = True
            victim.cycle.message_event.set()
        victim._stop_waiting()
        victim.transport.close()
        return True

    def _refuse(self, status: int, problem: str, fix: str) -> None:
        """Answer a Problem below h11 (whatever its state) and close the connection."""
        self._stop_waiting()
        if not self.transport.is_closing():
            self.transport.write(raw_problem(status, problem, fix))
            self.transport.close()
