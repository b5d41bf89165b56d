"""Peers of the bridge: rig/presenter servers (ROUTER) and the controller's client (DEALER).

Both are single-threaded and driven by ``poll()``. Reliable messages (see
:mod:`hardware.protocol`) flow both ways through an :class:`~hardware.stream.Outbox`
and :class:`~hardware.stream.Inbox`: acknowledged, replayed after a reconnect or
restart, each delivered exactly once and in order. Heartbeats detect a lost peer
within two intervals; the client then reconnects with a fresh socket and logs the
outage with its duration. Ping/pong exchanges estimate the clock offset.
"""

from __future__ import annotations

import errno
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from .errors import EndpointError
from .protocol import DEFAULT_MAX_BYTES, PROTOCOL_VERSION, RELIABLE_TYPES, ProtocolError, VersionError, decode, encode
from .stream import Inbox, Journal, Outbox

log = logging.getLogger(__name__)

#: What a server's poll() delivers, before any message of it, when a new controller stream begins: the
#: rig or presenter then drops what it held for the earlier one (its runs, schedules). Never on the wire.
NEW_STREAM = "new-stream"
#: What a client's poll() delivers, before any message of the new process, when its peer comes back as another
#: process (a new ``epoch`` in its hello: restarted without its journal), having forgotten its streams and runs.
#: Both streams start afresh from seq 1; the application re-sends what the peer must know. Never on the wire.
PEER_RESTARTED = "peer-restarted"
#: How long the controller hears nothing from a peer before it declares an outage (s): several heartbeats, so a
#: peer on a loaded machine or one that stalls for a moment is not taken for lost.
DEFAULT_PEER_TIMEOUT = 3.0
IDLE_POLL = 0.05  # s: how long a rig or presenter with nothing due waits for a message (heartbeats are >= 0.2 s)


def _current_stream(records: list[list]) -> tuple[str, list[list]]:
    """The last controller stream a journal's records began (its ``stream`` record; "" if none) and the records
    since."""
    start = max((i for i, r in enumerate(records) if r[0] == "stream"), default=-1)
    return (records[start][2] if start >= 0 else ""), records[start + 1 :]


def _epoch(journal: Journal | None, records: list[list]) -> str:
    """This process's epoch: the one its journal keeps (written there on first use), or a new one."""
    kept = next((r[2] for r in records if r[0] == "epoch"), None)
    if kept:
        return kept
    epoch = secrets.token_hex(8)
    if journal is not None:
        journal.append("epoch", 0, epoch)
    return epoch


@dataclass
class CurveKeys:
    """ZeroMQ CURVE keys (Z85 bytes). A server needs its secret key and the allowed client public keys."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None  # clients: the server's public key
    allowed_clients: list[bytes] = field(default_factory=list)  # servers: who may connect


class ClockSync:
    """NTP-style offset estimate (remote clock minus local clock), from the lowest-delay exchanges."""

    def __init__(self, keep: int = 32) -> None:
        self.samples: list[tuple[float, float]] = []  # (round-trip delay, offset)
        self.keep = keep
        self.count = 0  # exchanges so far

    def add(self, t0: float, t1: float, t2: float, t3: float) -> None:
        delay = (t3 - t0) - (t2 - t1)
        offset = ((t1 - t0) + (t2 - t3)) / 2
        self.samples.append((delay, offset))
        self.samples = self.samples[-self.keep :]
        self.count += 1

    @property
    def offset(self) -> float | None:
        return min(self.samples)[1] if self.samples else None

    @property
    def delay(self) -> float | None:
        return min(self.samples)[0] if self.samples else None


class _Endpoint:
    """What servers and clients share: reliable streams, journal, schedules, decoding."""

    def __init__(
        self,
        role: str,
        name: str,
        *,
        heartbeat: float,
        max_bytes: int,
        journal: str | Path | None,
        clock: Callable[[], float],
    ) -> None:
        self.role = role
        self.name = name
        self.heartbeat = heartbeat
        self.max_bytes = max_bytes
        self.clock = clock
        self.context = zmq.Context.instance()
        self.journal = Journal(journal) if journal else None
        self.errors: list[str] = []
        self._said: set[str] = set()  # problems logged once (a peer of another version repeats itself)
        self.last_problem: ProtocolError | None = None  # what the last frame that failed its checks had wrong
        self._last_resend = 0.0
        self._reset_streams()
        everything = list(self.journal.records()) if self.journal is not None else []
        self.epoch = _epoch(self.journal, everything)
        # the controller stream (hello's 'session') that the streams belong to; what the journal holds of
        # earlier streams belongs to earlier controllers' sessions and is not restored
        self.stream, records = _current_stream(everything)
        for kind, seq, payload in records:
            self.outbox.restore(kind, seq, payload)
            msg = self.inbox.restore(kind, seq, payload)
            if msg is not None:
                self.restored.append(msg)

    def stream_records(self) -> list[list]:
        """The journal's records since the current controller stream began (what a restart restores)."""
        return _current_stream(list(self.journal.records()) if self.journal is not None else [])[1]

    def _reset_streams(self) -> None:
        self.outbox = Outbox(self.journal)
        self.inbox = Inbox(self.journal)
        self.restored: list[dict] = []  # reliable messages delivered before a restart
        self._last_ack_sent = 0
        self._peer_last = 0  # the peer's last reliable seq, from its heartbeats and pings

    def _begin_stream(self, stream: str) -> None:
        """Start both streams afresh for controller stream ``stream`` (journaled first)."""
        if self.journal is not None:
            self.journal.append("stream", 0, stream)
        self._reset_streams()
        self.stream = stream

    def _message(self, type_: str, **fields: Any) -> dict:
        return {"type": type_, "t": self.clock(), **fields}

    def _frame_reliable(self, message: dict) -> Callable[[int], bytes]:
        def make(seq: int) -> bytes:
            return encode({**message, "seq": seq})

        return make

    def _decode(self, frame: bytes, peer: str) -> dict | None:
        try:
            return decode(frame, self.max_bytes)
        except ProtocolError as exc:
            text = f"rejected message from {peer}: {exc}"
            # A peer of another version says so with every frame (hellos every 100 ms): a server logs it once; for a
            # controller it is fatal (PeerClient.fatal), said once by whoever stops.
            again = text in self._said or self.role == "controller"
            (log.debug if isinstance(exc, VersionError) and again else log.error)(text)
            self._said.add(text)
            self.errors.append(text)
            self.last_problem = exc
            return None

    def _handle_reliable(self, message: dict) -> list[dict]:
        return self.inbox.accept(message)

    def poll(self, timeout: float = 0.0) -> list[dict]:
        """Handle traffic for up to ``timeout`` s; return the peer's new reliable messages, in order."""
        delivered: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if self.socket.poll(math.ceil(remaining * 1000)):  # whole ms, rounded up: no spinning at the end
                while (got := self._receive()) is not None:
                    delivered += got
            self._tick()
            if time.monotonic() >= deadline:
                return delivered

    def _receive(self) -> list[dict] | None:
        """Handle one waiting frame (None when there is none)."""
        raise NotImplementedError

    def _tick(self) -> None:
        """Heartbeats, acknowledgements, resends, outage checks."""
        raise NotImplementedError

    def _bookkeeping(self, send: Callable[[bytes], None]) -> None:
        upto = self.inbox.expected - 1
        if upto > self._last_ack_sent:
            send(encode(self._message("ack", upto=upto)))
            self._last_ack_sent = upto
        behind = self.inbox.gap or self._peer_last >= self.inbox.expected
        now = time.monotonic()
        if behind and now - self._last_resend > self.heartbeat / 2:
            send(encode(self._message("resend", start=self.inbox.expected)))
            self._last_resend = now


class PeerServer(_Endpoint):
    """The rig or presenter side: binds a ROUTER, serves one controller at a time."""

    def __init__(
        self,
        endpoint: str,
        role: str = "rig",
        name: str = "rig",
        *,
        heartbeat: float = 0.5,
        max_bytes: int = DEFAULT_MAX_BYTES,
        journal: str | Path | None = None,
        curve: CurveKeys | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_endpoint(endpoint, "listen on")
        socket = _socket(zmq.Context.instance(), zmq.ROUTER)  # bound first: a bad endpoint opens no journal
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if curve is not None:
            _server_curve(socket, curve)
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            socket.close(0)
            raise _endpoint_error("listen on", endpoint, exc) from None
        super().__init__(role, name, heartbeat=heartbeat, max_bytes=max_bytes, journal=journal, clock=clock)
        self.socket = socket
        self.endpoint = self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.peer: bytes | None = None
        self.peer_name = ""
        self.channels: list[str] = []  # a rig's names for its sample values, announced in hello
        self.confounds: list[str] = []  # a rig's names for its samples' quality measures, announced in hello
        self.content = False  # hello asks for each event's stimulus (a simulated subject needs it; a scanner not)
        self.simulated = False  # hello says the subject is simulated: the rig sends each trial's true response
        self.ready = False  # hello says this presenter sends `ready` once a schedule's stimuli are prepared
        self._peer_seen = 0.0
        self._hello_heard: tuple | None = None  # (identity, stream, resume_from) of the last hello heard
        self._last_beat = 0.0
        self._asked_hello: dict[bytes, float] = {}  # unknown identities told to say hello first, and when

    @property
    def connected(self) -> bool:
        return self.peer is not None and time.monotonic() - self._peer_seen < 2 * self.heartbeat

    def _send_to_peer(self, frame: bytes) -> bool:
        if self.peer is None:
            return False
        try:
            self.socket.send_multipart([self.peer, frame], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # peer gone or its queue full: replay covers it
            return False

    def send_reliable(self, type_: str, **fields: Any) -> int:
        """Send a data message (sample, trigger, presented); returns its seq."""
        seq, frame = self.outbox.add(self._frame_reliable(self._message(type_, **fields)))
        self._send_to_peer(frame)  # if lost, the controller asks again (gap, or our heartbeat's 'last')
        return seq

    def send(self, type_: str, **fields: Any) -> None:
        """Send an unacknowledged message (error, heartbeat...) if a controller is connected."""
        self._send_to_peer(encode(self._message(type_, **fields)))

    def _receive(self) -> list[dict] | None:
        try:
            ident, frame = self.socket.recv_multipart(zmq.NOBLOCK)[:2]
        except zmq.Again:
            return None
        except ValueError:  # fewer frames than an identity and a message
            return []
        return self._on_frame(ident, frame)

    def _tick(self) -> None:
        if self.peer is None:
            return
        self.keepalive()
        self._bookkeeping(self._send_to_peer)

    def keepalive(self) -> None:
        """Send a heartbeat if one is due. Call it during long work between polls (checking a schedule's
        images, a subject's responses to a batch of events), or the controller takes the peer for lost."""
        now = time.monotonic()
        if self.peer is not None and now - self._last_beat >= self.heartbeat:
            self.send("heartbeat", last=self.outbox.next_seq - 1)
            self._last_beat = now

    def _on_frame(self, ident: bytes, frame: bytes) -> list[dict]:
        recv_t = self.clock()
        seen = time.monotonic()
        who = self.peer_name if ident == self.peer else f"peer {ident.hex()}"
        msg = self._decode(frame, who)
        if msg is None:
            code = "version" if isinstance(self.last_problem, VersionError) else "bad-message"
            self._reply(ident, encode(self._message("error", code=code, message=self.errors[-1])))
            return []
        kind = msg["type"]
        if kind == "hello":
            hello = (ident, msg["session"], msg["resume_from"])
            again, self._hello_heard = hello == self._hello_heard, hello
            self.peer, self.peer_name, self._peer_seen = ident, msg["name"], seen
            new = msg["session"] != self.stream
            if new:  # another controller process (a new session, or one resumed after a crash)
                if self.outbox.pending or self.inbox.expected > 1:
                    log.warning("%s: controller stream %s replaces %s; the earlier one's undelivered messages "
                                "are dropped", self.name, msg["session"] or "''", self.stream or "''")  # fmt: skip
                self._begin_stream(msg["session"])
            self._last_ack_sent = 0
            reply = self._message("hello", role=self.role, name=self.name, session=self.stream, epoch=self.epoch,
                                  resume_from=self.inbox.expected, channels=self.channels, confounds=self.confounds,
                                  content=self.content,
                                  simulated=self.simulated, ready=self.ready)  # fmt: skip
            self._send_to_peer(encode(reply))
            for frame_ in self.outbox.since(msg["resume_from"]):
                self._send_to_peer(frame_)
            # A controller repeats its hello until answered: a peer slow to start finds several queued.
            (log.debug if again else log.info)("%s: controller %s connected (resume from %d)", self.name, msg["name"],
                                               msg["resume_from"])  # fmt: skip
            return [{"type": NEW_STREAM, "session": self.stream}] if new else []
        if ident != self.peer:  # only the controller that said hello last is served
            if self._asked_hello.get(ident, -1.0) < seen - self.heartbeat / 2:  # (a controller that reconnected
                self._asked_hello[ident] = seen  # to a restarted peer: its hello now, not after its timeout)
                text = "say hello first: this peer does not know you"
                self._reply(ident, encode(self._message("error", code="hello-first", message=text)))
            return []
        self._peer_seen = seen
        if kind == "ping":
            self._peer_last = msg["last"]
            self._send_to_peer(encode(self._message("pong", t0=msg["t0"], t1=recv_t, t2=self.clock())))
        elif kind == "ack":
            self.outbox.ack(msg["upto"])
        elif kind == "resend":
            for frame_ in self.outbox.since(msg["start"]):
                self._send_to_peer(frame_)
        elif kind == "bye":
            self.peer = None
        elif kind == "error":
            text = f"{self.name}: controller {self.peer_name} reported {msg['code']}: {msg['message']}"
            log.error(text)
            self.errors.append(text)
        elif kind in RELIABLE_TYPES:
            return self._handle_reliable(msg)
        return []

    def _reply(self, ident: bytes, frame: bytes) -> None:
        """Send to whoever sent a frame (not necessarily the controller served)."""
        try:
            self.socket.send_multipart([ident, frame], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def close(self) -> None:
        self.socket.close(0)
        if self.journal is not None:
            self.journal.close()


@dataclass
class Outage:
    """A period in which the controller heard nothing from a peer: ``start``/``end`` on the session's clock
    (simulated, in a simulation), ``wall_start``/``wall_end`` on the monotonic wall clock."""

    peer: str
    start: float
    end: float | None = None
    wall_start: float = 0.0
    wall_end: float | None = None

    @property
    def duration(self) -> float | None:
        """Seconds on the session's clock."""
        return None if self.end is None else self.end - self.start

    @property
    def wall_duration(self) -> float | None:
        """Seconds of real time."""
        return None if self.wall_end is None else self.wall_end - self.wall_start


class PeerClient(_Endpoint):
    """The controller's link to one rig or presenter: connects a DEALER, reconnects after outages."""

    def __init__(
        self,
        endpoint: str,
        name: str = "controller",
        *,
        heartbeat: float = 0.5,
        timeout: float | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        journal: str | Path | None = None,
        curve: CurveKeys | None = None,
        clock: Callable[[], float] = time.time,
        on_log: Callable[[str, str], None] | None = None,
    ) -> None:
        """``heartbeat``: how often to ping the peer (s); ``timeout``: how long the peer may be silent before
        an outage is declared (s; default :data:`DEFAULT_PEER_TIMEOUT`, at least three heartbeats)."""
        check_endpoint(endpoint, "connect to")
        probe = _socket(zmq.Context.instance(), zmq.DEALER)  # connecting is asynchronous: only the form can fail
        try:
            probe.connect(endpoint)
        except zmq.ZMQError as exc:
            raise _endpoint_error("connect to", endpoint, exc) from None
        finally:
            probe.close(0)
        super().__init__("controller", name, heartbeat=heartbeat, max_bytes=max_bytes, journal=journal, clock=clock)
        self.endpoint = endpoint
        self.curve = curve
        self.on_log = on_log or (lambda kind, text: log.info("%s: %s", kind, text))
        self.sync = ClockSync()
        self.peer_name = endpoint
        self.peer_role = ""
        self.peer_channels: list[str] = []  # what a rig calls its sample values (its hello; [] if it does not say)
        self.peer_confounds: list[str] = []  # what a rig calls its samples' quality measures (its hello)
        self.peer_content = False  # the rig asked for each event's stimulus (its hello)
        self.peer_simulated = False  # the rig's subject is simulated: it sends true responses (its hello)
        self.peer_ready = False  # the presenter says `ready` once a schedule's stimuli are prepared (its hello)
        self.peer_epoch = ""  # the peer process's epoch (its hello): another one means it forgot everything
        self.timeout = timeout if timeout is not None else max(DEFAULT_PEER_TIMEOUT, 3 * heartbeat)
        self.fatal: str | None = None  # why the two sides cannot talk at all (another protocol version)
        if not self.stream:  # one stream per client (kept in its journal, if it has one, across restarts)
            self._begin_stream(secrets.token_hex(8))
        self.up = False
        self.outages: list[Outage] = []
        self.socket: zmq.Socket | None = None
        self._seen, self._seen_clock = time.monotonic(), self.clock()  # when the peer was last heard
        self._last_beat = 0.0
        self._last_hello = 0.0
        self._connect()

    def _connect(self) -> None:
        if self.socket is not None:
            self.socket.close(0)
        s = _socket(self.context, zmq.DEALER)
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        if self.curve is not None:
            _client_curve(s, self.curve)
        s.connect(self.endpoint)
        self.socket = s
        self._send_hello()

    def _send_hello(self) -> None:
        self._last_hello = time.monotonic()
        self._raw(encode(self._message("hello", role="controller", name=self.name, session=self.stream,
                                       resume_from=self.inbox.expected, epoch=self.epoch)))  # fmt: skip

    def _raw(self, frame: bytes) -> None:
        try:
            self.socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:  # not connected yet; the next hello or replay covers it
            pass

    @property
    def offset(self) -> float | None:
        """Estimated peer clock minus controller clock (s)."""
        return self.sync.offset

    def to_local(self, remote_time: float) -> float:
        """Map a timestamp of the peer's clock to the controller's clock."""
        return remote_time - (self.sync.offset or 0.0)

    def to_remote(self, local_time: float) -> float | None:
        """Map a controller timestamp to the peer's clock (None before the clocks are compared)."""
        return None if self.sync.offset is None else local_time + self.sync.offset

    def send_reliable(self, type_: str, **fields: Any) -> int:
        """Send a command (schedule, start, stop, event) that must arrive exactly once."""
        seq, frame = self.outbox.add(self._frame_reliable(self._message(type_, **fields)))
        if self.up:
            self._raw(frame)
        return seq

    def ping(self) -> None:
        self._raw(encode(self._message("ping", t0=self.clock(), last=self.outbox.next_seq - 1)))

    def _handle_reliable(self, message: dict) -> list[dict]:
        """Deliver in order; a sample with values that are not finite is delivered with ``missing`` (the names
        of those channels), answered with an ``error`` and logged: acknowledged all the same, so never resent."""
        delivered = self.inbox.accept(message)
        for m in delivered:
            if m["type"] != "sample":
                continue
            bad = [i for i, v in enumerate(m["values"]) if not math.isfinite(v)]
            if not bad:
                continue
            names = [self.peer_channels[i] if i < len(self.peer_channels) else f"#{i}" for i in bad]
            m["missing"] = names
            what = ", ".join(f"{n} = {m['values'][i]}" for n, i in zip(names, bad, strict=True))
            text = (f"{self.peer_name} run {m['run']} volume {m['volume']}: {what} is not a finite number; the "
                    "volume is recorded as missing")  # fmt: skip
            self._raw(encode(self._message("error", code="non-finite", message=text)))
            self.on_log("bad-sample", text)
        return delivered

    def _receive(self) -> list[dict] | None:
        try:
            frame = self.socket.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        return self._on_frame(frame)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.up and now - self._seen > self.timeout:
            self.up = False
            self.outages.append(Outage(self.peer_name, self._seen_clock, wall_start=self._seen))
            self.on_log("outage", f"lost {self.peer_name}: nothing heard for {now - self._seen:.2f} s; reconnecting")
            self._connect()
        elif not self.up and now - self._last_hello >= min(0.1, self.heartbeat / 2):
            self._send_hello()  # until the peer answers
        if self.up:
            if now - self._last_beat >= self.heartbeat:
                self.ping()  # doubles as heartbeat and clock sample
                self._last_beat = now
            self._bookkeeping(self._raw)

    def _on_frame(self, frame: bytes) -> list[dict]:
        recv_t = self.clock()
        msg = self._decode(frame, self.peer_name)
        if msg is None:
            if isinstance(self.last_problem, VersionError) and self.fatal is None:
                self.fatal = (f"the peer at {self.endpoint} speaks protocol version {self.last_problem.version!r}, "
                              f"this controller version {PROTOCOL_VERSION}: they cannot work together; update "
                              "the peer to the protocol in docs/PROTOCOL.md")  # fmt: skip
                self._raw(encode(self._message("error", code="version", message=self.fatal)))
            return []
        heard = self._seen, self._seen_clock  # before this frame
        self._seen, self._seen_clock = time.monotonic(), recv_t  # (the session's clock may be simulated)
        kind = msg["type"]
        if kind == "hello":
            self.peer_name, self.peer_role, self.peer_channels = msg["name"], msg["role"], msg["channels"]
            self.peer_content, self.peer_simulated = msg["content"], msg["simulated"]
            self.peer_confounds = msg["confounds"]
            self.peer_ready = msg["ready"]
            if not self.up and self.outages and self.outages[-1].end is None:
                outage = self.outages[-1]
                outage.end, outage.wall_end = recv_t, self._seen
                simulated = f" ({outage.duration:.1f} s of simulated time)" if self.clock is not time.time else ""
                self.on_log("outage-end", f"{self.peer_name} back after {outage.wall_duration:.2f} s{simulated}")
            self.up = True
            self._last_ack_sent = 0
            restarted = bool(self.peer_epoch and msg["epoch"] and msg["epoch"] != self.peer_epoch)
            previous, self.peer_epoch = self.peer_epoch, msg["epoch"] or self.peer_epoch
            if restarted:  # a new process: it numbers from 1 again and knows nothing of what it was sent
                self._begin_stream(self.stream)
                self.ping()
                return [{"type": PEER_RESTARTED, "epoch": msg["epoch"], "previous": previous}]
            for frame_ in self.outbox.since(msg["resume_from"]):
                self._raw(frame_)
            self.ping()
        elif kind == "pong":
            self.sync.add(msg["t0"], msg["t1"], msg["t2"], recv_t)
        elif kind == "heartbeat":
            self._peer_last = msg["last"]
        elif kind == "ack":
            self.outbox.ack(msg["upto"])
        elif kind == "resend":
            for frame_ in self.outbox.since(msg["start"]):
                self._raw(frame_)
        elif kind == "error" and msg["code"] == "hello-first":  # the peer restarted: introduce ourselves now
            if self.up:  # an outage, though shorter than the timeout: from the last word of the process before
                self.up = False
                self.outages.append(Outage(self.peer_name, heard[1], wall_start=heard[0]))
                silence = self._seen - heard[0]
                self.on_log("outage", f"lost {self.peer_name}: it restarted (it no longer knows this controller) "
                                      f"after {silence:.2f} s of silence; reconnecting")  # fmt: skip
            if time.monotonic() - self._last_hello > self.heartbeat / 2:
                self._send_hello()
        elif kind == "error":
            text = f"{self.peer_name} reported {msg['code']}: {msg['message']}"
            if msg["code"] == "version" and self.fatal is None:
                self.fatal = f"{self.peer_name} at {self.endpoint}: {msg['message']}"
            log.error(text)
            self.errors.append(text)
        elif kind in RELIABLE_TYPES:
            return self._handle_reliable(msg)
        return []

    def close(self) -> None:
        if self.socket is not None:
            self._raw(encode(self._message("bye")))
            self.socket.close(0)
        if self.journal is not None:
            self.journal.close()


HIGH_WATER_MARK = 100_000  # messages queued per peer and direction; overflow is recovered by replay


def check_endpoint(endpoint: str, action: str = "use") -> None:
    """Refuse a TCP endpoint whose port is not 1-65535 (ZeroMQ would take 99999 modulo 65536), naming it."""
    rest = endpoint[len("tcp://") :] if endpoint.startswith("tcp://") else ""
    if ":" not in rest.rsplit("]", 1)[-1]:  # not TCP, or no port at all: ZeroMQ says what is wrong
        return
    port = rest.rsplit(":", 1)[1]
    if port == "*" or (port.isdigit() and 1 <= int(port) <= 65535):
        return
    error = EndpointError(f"cannot {action} {endpoint!r}: the port must be a number from 1 to 65535"
                          + (" (or * for any free one, when listening)" if action == "listen on" else "")
                          + "; an endpoint looks like tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")  # fmt: skip
    error.errno = errno.EINVAL
    raise error


def _endpoint_error(action: str, endpoint: str, exc: zmq.ZMQError) -> EndpointError:
    """The error for an endpoint that ``action`` failed on, with what to do about the common causes."""
    no_address = "this machine has no such address: use one of its own, or tcp://*:PORT for all of them"
    hint = {
        errno.EADDRINUSE: "another process (an earlier rig or presenter?) serves there: stop it or use another port",
        errno.EINVAL: "an endpoint looks like tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555",
        errno.ENODEV: no_address,
        errno.EADDRNOTAVAIL: no_address,
    }.get(exc.errno)
    error = EndpointError(f"cannot {action} {endpoint!r}: {zmq.strerror(exc.errno)}" + (f"; {hint}" if hint else ""))
    error.errno = exc.errno
    return error


def _socket(context: zmq.Context, kind: int) -> zmq.Socket:
    """A socket with the options both sides share: bounded queues, no linger on close."""
    s = context.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    s.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    return s


def _server_curve(socket: zmq.Socket, keys: CurveKeys) -> None:
    from .security import start_authenticator

    start_authenticator(keys.allowed_clients)
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def _client_curve(socket: zmq.Socket, keys: CurveKeys) -> None:
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.server_public
