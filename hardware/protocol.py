"""The NeuroTwin wire protocol: message types, msgpack encoding, and schema checks on receipt.

Every message is one ZeroMQ frame holding a msgpack map with at least ``v``
(protocol version), ``type`` and ``t`` (the sender's clock, seconds). Reliable
messages (data: ``sample``, ``trigger``, ``presented``, ``refused``, ``truth``; commands:
``schedule``, ``start``, ``stop``, ``event``) also carry ``seq``, the sender's per-stream
sequence number, and are acknowledged and replayed. See docs/PROTOCOL.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 2
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
# Reliable messages carry a per-stream ``seq``; they are acknowledged and replayed after reconnects.
RELIABLE_TYPES = frozenset({"sample", "trigger", "presented", "refused", "truth", "schedule", "start", "stop",
                            "event", "ready"})  # fmt: skip


class ProtocolError(Exception):
    """A message that cannot be accepted: malformed, oversized, wrong version or wrong schema."""


class VersionError(ProtocolError):
    """A message of another protocol version: the two peers cannot talk at all."""

    def __init__(self, version: object) -> None:
        self.version = version
        super().__init__(f"protocol version {version!r} is not supported (this side speaks {PROTOCOL_VERSION})")


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: int
    t: float


class Hello(_Msg):
    type: Literal["hello"]
    role: Literal["controller", "rig", "presenter"]
    name: str
    session: str = ""  # the controller's stream: a peer that hears a new one starts its streams afresh
    resume_from: int = 0  # the first reliable seq the sender of this hello still needs from the other side
    channels: list[str] = Field(default_factory=list)  # a rig's names for the values of its samples, in order
    # a rig's names for the quality measures each sample may carry beside its values (motion, framewise displacement)
    confounds: list[str] = Field(default_factory=list)
    # The sender process's memory: kept across restarts by its journal, new otherwise. A peer back with another
    # epoch has forgotten its streams (and a rig its runs).
    epoch: str = ""
    content: bool = False  # a rig that needs each event's stimulus (a simulated subject); others get ids and timing
    simulated: bool = False  # a rig whose subject is simulated: it sends each trial's true response (``truth``)
    ready: bool = False  # a presenter that says ``ready`` once a schedule's stimuli are checked and prepared


class Ping(_Msg):
    type: Literal["ping"]
    t0: float
    last: int = 0  # the sender's last reliable seq: lets the receiver notice lost tail messages


class Pong(_Msg):
    type: Literal["pong"]
    t0: float
    t1: float  # server receive time
    t2: float  # server send time


class Heartbeat(_Msg):
    type: Literal["heartbeat"]
    last: int = 0  # the sender's last reliable seq


class Ack(_Msg):
    type: Literal["ack"]
    upto: int  # every reliable seq <= upto has been received


class Resend(_Msg):
    type: Literal["resend"]
    start: int  # replay every reliable message from this seq on


class Trial(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trial: int
    stimulus_id: int
    kind: Literal["text", "image", "fixation"]
    text: str = ""
    image: bytes = b""  # PNG bytes
    image_name: str = ""
    onset: float  # seconds after the run's first trigger
    duration: float = Field(gt=0)
    word_by_word: float = 0.0  # seconds per word; 0 shows the sentence whole
    condition: str = ""


class Schedule(_Msg):
    type: Literal["schedule"]
    seq: int
    run: int
    trials: list[Trial]


class Start(_Msg):
    type: Literal["start"]
    seq: int
    run: int
    tr: float = Field(gt=0)
    n_volumes: int = Field(gt=0)
    first_volume: int = Field(default=0, ge=0)  # a run taken up again after a rig restart: its next volume
    origin: float | None = None  # ... and when its volume 0 was acquired (the rig's clock)


class Stop(_Msg):
    type: Literal["stop"]
    seq: int
    run: int


class Presented(_Msg):
    type: Literal["presented"]
    seq: int
    run: int
    trial: int
    stimulus_id: int
    onset: float  # measured at the flip, sender's clock
    offset: float
    frame_interval: float = 0.0
    scheduled: float | None = None  # when the onset was due, sender's clock (onset - scheduled = lateness)


class Refused(_Msg):
    """The presenter will not show a trial (an image outside the safety limits)."""

    type: Literal["refused"]
    seq: int
    run: int
    trial: int
    stimulus_id: int
    reason: str


class Ready(_Msg):
    """The presenter has checked and prepared a run's stimuli: its trigger may come."""

    type: Literal["ready"]
    seq: int
    run: int
    trials: int  # how many of the schedule's trials it will show (the others were refused)


class Trigger(_Msg):
    type: Literal["trigger"]
    seq: int
    run: int
    volume: int
    time: float
    receiver_time: float | None = None  # relayed triggers: the same instant on the receiver's clock


class Sample(_Msg):
    type: Literal["sample"]
    seq: int
    run: int
    kind: Literal["fmri", "spikes"]
    volume: int = -1  # fMRI volume index in the run (or window index)
    time: float  # acquisition time of the volume, or start of the count window (sender's clock)
    width: float = 0.0  # window length for spike counts
    values: list[float]
    confounds: list[float] = Field(default_factory=list)  # the volume's quality measures, as hello's confounds


class Event(_Msg):
    """A stimulus event: what was shown when. Its ``text`` or ``image`` only for a rig whose hello asked for
    content (a simulated subject's input); others get ids and timing."""

    type: Literal["event"]
    seq: int
    run: int
    trial: int
    stimulus_id: int
    onset: float
    duration: float
    text: str = ""
    image: bytes = b""


class Truth(_Msg):
    """A simulated rig's true, noise-free response to an event's stimulus, per channel (what its subject
    computed; the samples carry it convolved and with noise)."""

    type: Literal["truth"]
    seq: int
    run: int
    trial: int
    stimulus_id: int
    values: list[float]


class ErrorMsg(_Msg):
    type: Literal["error"]
    code: str
    message: str


class Bye(_Msg):
    type: Literal["bye"]


Message = Annotated[
    Hello
    | Ping
    | Pong
    | Heartbeat
    | Ack
    | Resend
    | Schedule
    | Start
    | Stop
    | Presented
    | Refused
    | Ready
    | Trigger
    | Sample
    | Event
    | Truth
    | ErrorMsg
    | Bye,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter = TypeAdapter(Message)


class PeerRestarted(BaseModel):
    """Not on the wire: what a :class:`~hardware.peer.PeerClient` delivers when its peer came back as a new process
    (another ``epoch`` in its hello) that has forgotten the stream (and a rig, its runs)."""

    type: Literal["peer-restarted"]
    epoch: str
    previous: str


# Each message type's model, by its ``type`` tag.
MODELS: dict[str, type[BaseModel]] = {model.model_fields["type"].annotation.__args__[0]: model
                                      for model in (*Message.__origin__.__args__, PeerRestarted)}  # fmt: skip


def typed(message: dict[str, Any]) -> BaseModel:
    """A message :func:`decode` returned, as its model (``Sample``, ``Presented``...): fields by name, checked
    once already, not again."""
    return MODELS[message["type"]].model_construct(**message)


def encode(message: dict[str, Any]) -> bytes:
    """One frame for a message dict (``v`` is filled in)."""
    message.setdefault("v", PROTOCOL_VERSION)
    return msgpack.packb(message, use_bin_type=True)


def decode(frame: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Parse and check one frame; raise ProtocolError naming the problem."""
    if len(frame) > max_bytes:
        raise ProtocolError(f"message of {len(frame)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=True, max_bin_len=max_bytes, max_str_len=max_bytes)
    except Exception as exc:  # msgpack raises several types for bad bytes
        raise ProtocolError(f"not a msgpack message ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message must be a map, got {type(obj).__name__}")
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise VersionError(version)
    try:
        return _ADAPTER.validate_python(obj).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = list(first["loc"])
        if loc and loc[0] == obj.get("type"):
            loc = loc[1:]  # the discriminator tag
        where = ".".join(str(x) for x in loc) or "message"
        raise ProtocolError(f"invalid {obj.get('type', 'untyped')!r} message: {where}: {first['msg']}") from None
