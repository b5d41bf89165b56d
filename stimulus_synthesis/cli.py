"""``neurotwin corpus ...``: build and inspect candidate pools."""

from __future__ import annotations

from pathlib import Path

import click

SOURCES = ("wordnet-examples", "wordnet-glosses", "lee")


@click.group(name="corpus")
def corpus_group() -> None:
    """Candidate sentence pools."""


@corpus_group.command("build")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Pool file to write (.txt).")
@click.option("--sources", default=",".join(SOURCES), show_default=True, help="Comma-separated offline sources.")
@click.option("--min-words", default=5, show_default=True)
@click.option("--max-words", default=40, show_default=True)
def build_cmd(out: Path, sources: str, min_words: int, max_words: int) -> None:
    """The default offline pool: WordNet example sentences and glosses, and gensim's Lee news corpus."""
    from .corpus import lee_sentences, wordnet_sentences
    from .pool import clean, write_pool

    chosen = [s.strip() for s in sources.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SOURCES]
    if unknown or not chosen:
        raise click.BadParameter(f"unknown source(s) {unknown}; choose from {', '.join(SOURCES)}")
    readers = {
        "wordnet-examples": lambda: wordnet_sentences("examples", min_words),
        "wordnet-glosses": lambda: wordnet_sentences("glosses", min_words),
        "lee": lambda: lee_sentences(min_words),
    }
    raw: list[str] = []
    for name in chosen:
        try:
            texts = list(readers[name]())
        except (FileNotFoundError, ImportError) as exc:
            raise click.ClickException(f"source {name}: {exc}") from None
        click.echo(f"{name}: {len(texts)} sentences read")
        raw += texts
    pool = clean(raw, min_words, max_words)
    write_pool(pool.sentences, out)
    click.echo(f"wrote {pool.summary()} to {out}")


@corpus_group.command("info")
@click.argument("pool", type=click.Path(path_type=Path))
@click.option("--column", default="sentence", show_default=True, help="Column of a CSV/TSV pool.")
def info_cmd(pool: Path, column: str) -> None:
    """How many usable, distinct sentences a pool source holds."""
    from .pool import load_pool

    click.echo(f"{pool}: {load_pool(pool, column).summary()}")
