"""Hardware bridge: the ZeroMQ wire protocol, rig and presenter peers, simulated rigs."""

from .peer import ClockSync, CurveKeys, Outage, PeerClient, PeerServer
from .protocol import PROTOCOL_VERSION, ProtocolError, decode, encode

__all__ = [
    "PROTOCOL_VERSION",
    "ClockSync",
    "CurveKeys",
    "Outage",
    "PeerClient",
    "PeerServer",
    "ProtocolError",
    "decode",
    "encode",
]
