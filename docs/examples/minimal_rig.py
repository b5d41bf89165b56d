"""A minimal NeuroTwin rig, written from docs/PROTOCOL.md alone: pyzmq and msgpack, no NeuroTwin imports.

It plays a scanner: after each `start` it acquires a volume every TR (the first at once) and
sends its `trigger` and `sample`, one value per channel (a made-up signal that rises a few
seconds after each event). Replace `acquire` with your system's values to make it real.

    python docs/examples/minimal_rig.py --bind tcp://127.0.0.1:5560 --channels lang

then, in another terminal, `neurotwin session run PROTOCOL --rig tcp://127.0.0.1:5560 ...`.
It keeps no journal: restarted, it is a new process (a new epoch) and the controller tells
it where the run it was in goes on. Every volume it sends is printed on standard output.
"""

from __future__ import annotations

import argparse
import math
import random
import secrets
import sys
import time

import msgpack
import zmq

VERSION = 2
HEARTBEAT = 0.5  # s between heartbeats (the controller declares an outage after 3 s of silence)


def acquire(run: dict, volume: int, t: float) -> list[float]:
    """The channels' values of one volume: drift, noise, and a response 4-10 s after each event's onset."""
    rel = t - run["origin"]
    evoked = sum(0.5 for e in run["events"] if 4.0 <= rel - e["onset"] <= 4.0 + e["duration"] + 2.0)
    return [0.1 * math.sin(rel / 30.0) + random.gauss(0.0, 0.2) + evoked for _ in run["channels"]]


class Rig:
    def __init__(self, bind: str, channels: list[str], name: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(bind)
        self.channels, self.name = channels, name
        self.epoch = secrets.token_hex(8)  # this process; no journal, so a restart is a new epoch
        self.controller: bytes | None = None  # the identity of the controller that said hello last
        self.session = ""  # the controller's stream (hello's `session`)
        self.reset()
        self.events: dict[int, list[dict]] = {}  # run -> its events (they may come before its start)
        self.runs: dict[int, dict] = {}
        self.last_beat = 0.0

    def reset(self) -> None:
        """Both streams afresh: what I send is numbered from 1; I expect the controller's seq 1 next."""
        self.next_seq, self.unacked, self.expected = 1, {}, 1

    def message(self, type_: str, **fields: object) -> bytes:
        return msgpack.packb({"v": VERSION, "type": type_, "t": time.time(), **fields}, use_bin_type=True)

    def send(self, frame: bytes, to: bytes | None = None) -> None:
        to = to or self.controller
        if to is not None:
            try:
                self.socket.send_multipart([to, frame], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a controller that went away: it asks again (`resend`) when it is back

    def send_reliable(self, type_: str, **fields: object) -> None:
        frame = self.message(type_, seq=self.next_seq, **fields)
        self.unacked[self.next_seq] = frame  # kept until acknowledged
        self.next_seq += 1
        self.send(frame)

    def receive(self, ident: bytes, frame: bytes) -> None:
        recv_t = time.time()
        try:
            msg = msgpack.unpackb(frame, raw=False)
            assert isinstance(msg, dict) and "type" in msg
        except Exception:
            self.send(self.message("error", code="bad-message", message="not a msgpack map with a type"), ident)
            return
        if msg.get("v") != VERSION:
            if msg["type"] == "error":
                print(f"error from the controller: {msg.get('message')}", file=sys.stderr)
            else:
                text = f"protocol version {msg.get('v')!r} is not supported (this side speaks {VERSION})"
                print(f"rejected a message: {text}", file=sys.stderr)
                self.send(self.message("error", code="version", message=text), ident)
            return
        kind = msg["type"]
        if kind == "hello":
            self.controller = ident
            if msg["session"] != self.session:  # another controller process: start afresh
                self.session = msg["session"]
                self.reset()
                self.events.clear()
                self.runs.clear()
            self.send(
                self.message(
                    "hello",
                    role="rig",
                    name=self.name,
                    session=self.session,
                    epoch=self.epoch,
                    resume_from=self.expected,
                    channels=self.channels,
                )
            )
            for seq, f in self.unacked.items():  # what the controller still lacks
                if seq >= msg["resume_from"]:
                    self.send(f)
            return
        if ident != self.controller:
            self.send(self.message("error", code="hello-first", message="say hello first"), ident)
            return
        if kind == "ping":
            self.send(self.message("pong", t0=msg["t0"], t1=recv_t, t2=time.time()))
            if msg["last"] >= self.expected:  # the controller sent commands I have not received
                self.send(self.message("resend", start=self.expected))
        elif kind == "ack":
            self.unacked = {s: f for s, f in self.unacked.items() if s > msg["upto"]}
        elif kind == "resend":
            for seq, f in self.unacked.items():
                if seq >= msg["start"]:
                    self.send(f)
        elif kind == "error":
            print(f"error from the controller: {msg['code']}: {msg['message']}", file=sys.stderr)
        elif kind in ("start", "stop", "event"):
            if msg["seq"] == self.expected:
                self.expected += 1
                self.command(msg)
            elif msg["seq"] > self.expected:  # one was lost on the way: ask for it (and this one) again
                self.send(self.message("resend", start=self.expected))
            self.send(self.message("ack", upto=self.expected - 1))  # duplicates are acknowledged and dropped

    def command(self, msg: dict) -> None:
        run = msg["run"]
        if msg["type"] == "event":
            self.events.setdefault(run, []).append(msg)
        elif msg["type"] == "start":
            origin = msg.get("origin")  # given when a run is taken up again after a restart
            self.runs[run] = {"number": run, "tr": msg["tr"], "n": msg["n_volumes"],
                              "next": msg.get("first_volume", 0), "origin": time.time() if origin is None else origin,
                              "events": self.events.get(run, []), "channels": self.channels}  # fmt: skip
        elif msg["type"] == "stop" and run in self.runs:
            self.runs[run]["n"] = min(self.runs[run]["n"], self.runs[run]["next"])

    def acquire_due(self) -> None:
        now = time.time()
        for number, run in list(self.runs.items()):
            while run["next"] < run["n"] and run["origin"] + run["next"] * run["tr"] <= now:
                k = run["next"]
                t = run["origin"] + k * run["tr"]
                self.send_reliable("trigger", run=number, volume=k, time=t)
                self.send_reliable("sample", run=number, kind="fmri", volume=k, time=t, width=0.0,
                                   values=acquire(run, k, t))  # fmt: skip
                print(f"run {number} volume {k} time {t:.6f}", flush=True)
                run["next"] += 1
            if run["next"] >= run["n"]:
                del self.runs[number]

    def serve(self) -> None:
        while True:
            if self.socket.poll(5):
                ident, frame = self.socket.recv_multipart()[:2]
                self.receive(ident, frame)
            self.acquire_due()
            if self.controller is not None and time.time() - self.last_beat >= HEARTBEAT:
                self.send(self.message("heartbeat", last=self.next_seq - 1))
                self.last_beat = time.time()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="tcp://127.0.0.1:5560")
    parser.add_argument("--channels", default="lang", help="the names of each sample's values, comma-separated")
    parser.add_argument("--name", default="minimal-rig")
    args = parser.parse_args(argv)
    rig = Rig(args.bind, args.channels.split(","), args.name)
    print(f"{args.name} serving on {args.bind}", file=sys.stderr, flush=True)
    try:
        rig.serve()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
