"""Offline sentence sources: WordNet's example sentences and glosses, and gensim's Lee news corpus."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

WORDNET_DIRS = (Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet"))
_QUOTED = re.compile(r'"([^"]+)"')


def wordnet_dir() -> Path:
    """The folder of Debian's ``wordnet-base`` data files."""
    for d in WORDNET_DIRS:
        if (d / "data.noun").exists():
            return d
    raise FileNotFoundError("WordNet data not found: install Debian's wordnet-base (apt-get install wordnet-base)")


def wordnet_sentences(kind: str = "examples", min_words: int = 5) -> Iterator[str]:
    """Example sentences (``kind='examples'``) or glosses (``'glosses'``) from WordNet, in file order."""
    if kind not in ("examples", "glosses"):
        raise ValueError("kind must be 'examples' or 'glosses'")
    root = wordnet_dir()
    for pos in ("noun", "verb", "adj", "adv"):
        with open(root / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue
                gloss = line.split(" | ", 1)[1].strip()
                if kind == "examples":
                    texts = _QUOTED.findall(gloss)
                else:
                    texts = [gloss.split('; "', 1)[0].split('"', 1)[0].strip(" ;")]
                for text in texts:
                    text = " ".join(text.split())
                    if len(text.split()) >= min_words:
                        yield text


def lee_sentences(min_words: int = 5) -> Iterator[str]:
    """Sentences of the Lee news corpus bundled in the gensim wheel."""
    from gensim.test.utils import datapath

    from .pool import split_sentences

    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8", errors="replace")
    for sentence in split_sentences(text):
        if len(sentence.split()) >= min_words:
            yield sentence
