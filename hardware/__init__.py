"""Hardware bridge, what a real lab runs: the ZeroMQ wire protocol, rig and presenter peers, a relay rig for real
recordings, the presenter. (Simulated rigs and subjects: ``simulation``.)

Names load on first use (lazy_loader), so the command line starts without zmq, torch or PsychoPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "errors": ["EndpointError", "BridgeFileError"],
        "peer": ["ClockSync", "CurveKeys", "Outage", "PeerClient", "PeerServer"],
        "presenter": ["NullDisplay", "Presenter", "PsychoPyDisplay"],
        "protocol": ["PROTOCOL_VERSION", "ProtocolError", "decode", "encode"],
        "relay": ["RelayRig"],
    },
)

if TYPE_CHECKING:
    from .errors import BridgeFileError, EndpointError
    from .peer import ClockSync, CurveKeys, Outage, PeerClient, PeerServer
    from .presenter import NullDisplay, Presenter, PsychoPyDisplay
    from .protocol import PROTOCOL_VERSION, ProtocolError, decode, encode
    from .relay import RelayRig
