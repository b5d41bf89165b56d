"""Hardware bridge: the ZeroMQ wire protocol, rig and presenter peers, simulated rigs, the presenter."""

from .peer import ClockSync, CurveKeys, Outage, PeerClient, PeerServer
from .presenter import NullDisplay, Presenter, PsychoPyDisplay
from .protocol import PROTOCOL_VERSION, ProtocolError, decode, encode
from .rigs import SimulatedEphysRig, SimulatedFMRIRig, gabor_tuning, sim_clock
from .subject import LanguageSubject, load_subject

__all__ = [
    "PROTOCOL_VERSION",
    "ClockSync",
    "CurveKeys",
    "LanguageSubject",
    "NullDisplay",
    "Outage",
    "PeerClient",
    "PeerServer",
    "Presenter",
    "ProtocolError",
    "PsychoPyDisplay",
    "SimulatedEphysRig",
    "SimulatedFMRIRig",
    "decode",
    "encode",
    "gabor_tuning",
    "load_subject",
    "sim_clock",
]
