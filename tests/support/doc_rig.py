"""The example rig of docs/examples/minimal_rig.py (written from docs/PROTOCOL.md alone), with the faults the tests
give it: ``python -m tests.support.doc_rig [--nan RUN:VOLUME] [--version N] RIG-ARGUMENTS...``."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "minimal_rig.py"


def load_example():
    spec = importlib.util.spec_from_file_location("minimal_rig", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nan", default=None, help="RUN:VOLUME whose first value is sent as NaN")
    parser.add_argument("--version", type=int, default=None, help="speak this protocol version instead")
    ours, rest = parser.parse_known_args()
    rig = load_example()
    if ours.version is not None:
        rig.VERSION = ours.version
    if ours.nan is not None:
        nan_run, nan_volume = (int(x) for x in ours.nan.split(":"))
        acquire = rig.acquire

        def faulty(run: dict, volume: int, t: float) -> list[float]:
            values = acquire(run, volume, t)
            if run["number"] == nan_run and volume == nan_volume:
                values[0] = float("nan")
            return values

        rig.acquire = faulty
    rig.main(rest)


if __name__ == "__main__":
    main()
