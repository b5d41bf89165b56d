"""Lab Streaming Layer (LSL): the presenter's marker stream.

Every trial a presenter shows is published on an LSL string-marker stream (type ``Markers``), one JSON
marker per trial, stamped with LSL's clock at the trial's first flip, so LabRecorder or any other inlet
records the onsets beside the lab's data streams on one clock. ``pylsl`` is imported only when a marker
stream is asked for; its wheel bundles liblsl.
"""

from __future__ import annotations

import json
from typing import Any

MARKER_TYPE = "Markers"
MARKER_FIELDS = ("session", "run", "trial", "stimulus_id", "condition", "kind", "scheduled", "onset")


class LSLError(RuntimeError):
    """LSL cannot be used here: pylsl is missing or liblsl does not load."""


def pylsl() -> Any:
    """The pylsl module, or LSLError saying why it cannot be used."""
    try:
        import pylsl as module

        module.local_clock()
    except (ImportError, OSError, RuntimeError) as exc:
        raise LSLError(f"Lab Streaming Layer is not available (pip install pylsl): {exc}") from None
    return module


class MarkerOutlet:
    """An LSL marker stream of shown trials: :meth:`push` one JSON marker per trial at its onset."""

    def __init__(self, name: str = "NeuroTwin markers", source_id: str = "") -> None:
        lsl = pylsl()
        self._clock = lsl.local_clock
        info = lsl.StreamInfo(name, MARKER_TYPE, 1, lsl.IRREGULAR_RATE, lsl.cf_string,
                              source_id or f"neurotwin-markers:{name}")  # fmt: skip
        fields = info.desc().append_child("fields")
        for field in MARKER_FIELDS:
            fields.append_child_value("field", field)
        info.desc().append_child_value("encoding", "JSON object per marker")
        self.name = name
        self.outlet = lsl.StreamOutlet(info)

    def now(self) -> float:
        """LSL's clock (seconds)."""
        return self._clock()

    def push(self, marker: dict, timestamp: float) -> None:
        """Publish one marker (a JSON object) stamped ``timestamp`` on LSL's clock."""
        self.outlet.push_sample([json.dumps(marker, separators=(",", ":"))], timestamp)

    def close(self) -> None:
        """Stop publishing (inlets see the stream end)."""
        self.outlet = None
