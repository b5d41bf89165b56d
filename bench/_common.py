"""Shared helpers for the benchmarks: locating the reference data and sampling new sentences."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # (a benchmark runs as a script from bench/)
from kit.paths import shared_data  # noqa: E402

SHARED = shared_data()
PEREIRA = SHARED / "pereira2018_language_network.csv"
PRIOR = ROOT / "protocols" / "priors" / "pereira2018_smollm2.json"  # the language protocols' prior


def parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line, with its module docstring as the help (so --help runs nothing)."""
    first, _, rest = doc.strip().partition("\n")
    raw = argparse.RawDescriptionHelpFormatter
    return argparse.ArgumentParser(description=first, epilog=rest.strip(), formatter_class=raw)


def need_shared() -> None:
    if not PEREIRA.exists():
        sys.exit(f"skipped: reference data not found at {SHARED} (see the README)")


def new_sentences(n: int, seed: int = 0) -> list[str]:
    """n distinct sentences from WordNet examples and the Lee corpus, none from the Pereira set."""
    import pandas as pd

    from stimulus_synthesis import lee_sentences, wordnet_sentences

    pool = list(dict.fromkeys([*wordnet_sentences("examples"), *lee_sentences()]))
    if PEREIRA.exists():
        taken = set(pd.read_csv(PEREIRA).sentence)
        pool = [s for s in pool if s not in taken]
    random.Random(seed).shuffle(pool)
    return pool[:n]
