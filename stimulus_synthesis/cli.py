"""``neurotwin corpus ...``: build and inspect candidate pools."""

from __future__ import annotations

from pathlib import Path

import click

from kit.cli import FiniteFloat, OutputFile
from twin.paths import replaced_whole

SOURCES = ("wordnet-examples", "wordnet-glosses", "lee")


@click.group(name="corpus")
def corpus_group() -> None:
    """Candidate sentence pools."""


@corpus_group.command("build")
@click.option("--out", required=True, type=OutputFile(), help="Pool file to write (.txt).")
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


@click.command("synthesize")
@click.option("--twin", "twin_file", required=True, type=click.Path(path_type=Path), help="Twin file (.h5).")
@click.option("--modality", type=click.Choice(["text", "image"]), default="text", show_default=True,
              help="Sentences from a pool, or images synthesized by gradient or CMA-ES.")  # fmt: skip
@click.option("--pool", "pool_path", default=None, type=click.Path(path_type=Path),
              help="Candidates (text): .txt (one per line), .csv/.tsv (--column) or a folder of .txt.")  # fmt: skip
@click.option("--out", required=True, type=OutputFile(),
              help="CSV to write (images: PNGs go in a folder named after it).")  # fmt: skip
@click.option("--goal", type=click.Choice(["drive", "suppress", "target", "control"]), default="drive",
              show_default=True)  # fmt: skip
@click.option("--n", "n", default=250, show_default=True, help="How many sentences to choose.")
@click.option("--roi", default=None, help="Target ROI (a twin target; default: the first).")
@click.option("--value", type=FiniteFloat(), default=None, help="Response to aim at (goal target; required there).")
@click.option("--hold", default="1", show_default=True,
              help="Penalty per unit change of the other ROIs (goal control); images: 'auto' lets the twin choose "
                   "it from 1, 3 and 6 (needs --start, the images the twin was fit on).")  # fmt: skip
@click.option("--acquisition", type=click.Choice(["mean", "ucb", "thompson"]), default="mean", show_default=True,
              help="Sentences: rank by the twin's predictions (mean), plus --beta SDs of them (ucb), or by the "
                   "predictions of one draw from the twin's posterior (thompson; --seed).")  # fmt: skip
@click.option("--beta", type=FiniteFloat(min=0), default=1.0, show_default=True,
              help="SDs of the predicted mean added by --acquisition ucb.")  # fmt: skip
@click.option("--column", default="sentence", show_default=True, help="Column of a CSV/TSV pool.")
@click.option("--min-words", default=3, show_default=True)
@click.option("--max-words", default=40, show_default=True)
@click.option("--charset", default=r"[A-Za-z0-9 ,.;:'\"?!()\-]", show_default=True,
              help="Regular-expression class every character must match ('' for any).")  # fmt: skip
@click.option("--blocklist", default=None,
              help="Blocked words or /regex/ patterns: comma-separated, or @FILE with one per line.")  # fmt: skip
@click.option("--min-readability", type=FiniteFloat(), default=None, help="Lowest Flesch reading ease.")
@click.option("--max-readability", type=FiniteFloat(), default=None, help="Highest Flesch reading ease.")
@click.option("--max-similarity", type=FiniteFloat(min=0, max=1), default=0.9, show_default=True,
              help="Highest similarity to each other or to --exclude (word and word-pair cosine).")  # fmt: skip
@click.option("--exclude", type=click.Path(path_type=Path), default=None,
              help="Sentences already shown (one per line): never chosen, and nothing too similar.")  # fmt: skip
@click.option("--generate", "budget", default=0, show_default=True,
              help="Candidates to evaluate in local search beyond the pool (0: corpus only).")  # fmt: skip
@click.option("--naturalness-model", default="smollm2-135m", show_default=True, help="Causal LM judging naturalness.")
@click.option("--max-nll", type=FiniteFloat(min=0), default=7.0, show_default=True,
              help="Highest mean surprisal (nats/token) generated.")  # fmt: skip
@click.option("--max-edits", default=2, show_default=True, type=click.IntRange(min=1),
              help="Most edits a generated sentence may be from its corpus sentence.")  # fmt: skip
@click.option("--log", "log_path", type=OutputFile(), default=None,
              help="CSV of every generated candidate evaluated.")  # fmt: skip
@click.option("--model", default=None, help="Fail unless the twin uses this feature model.")
@click.option("--method", type=click.Choice(["gradient", "cmaes"]), default="gradient", show_default=True,
              help="Image synthesis: gradient ascent, or CMA-ES (gradient-free).")  # fmt: skip
@click.option("--steps", default=256, show_default=True, help="Twin evaluations per image.")
@click.option("--start", "start_path", type=click.Path(path_type=Path), default=None,
              help="Images (a folder of PNG/JPEG, or one file) to start gradient synthesis from: the N "
                   "the twin rates best for the goal, e.g. its training images (default: faint noise).")  # fmt: skip
@click.option("--size", default=128, show_default=True, help="Image side (pixels).")
@click.option("--seed", default=0, show_default=True)
@click.option("--cache", default=None, help="Feature cache file (default: $NEUROTWIN_CACHE/features.h5).")
@click.option("--device", default="cpu", show_default=True)
def synthesize_cmd(twin_file, modality, pool_path, out, goal, n, roi, value, hold, acquisition, beta, column,
                   min_words, max_words, charset, blocklist, min_readability, max_readability, max_similarity,
                   exclude, budget, naturalness_model, max_nll, max_edits, log_path, model, method, steps, start_path,
                   size, seed, cache, device) -> None:  # fmt: skip
    """Choose (and optionally generate) sentences, or synthesize images, that the twin predicts will
    drive or suppress a target.

    Text: writes OUT, a CSV with each sentence's predicted response and uncertainty
    per target, its source (corpus or generated) and a constraint report. The pool is
    embedded once into the feature cache (resumable); later runs only re-score it.
    Images (--modality image): writes PNGs within the safety limits to a folder named
    after OUT, and OUT, a CSV with each image's predicted responses and safety report.
    """
    if goal == "target" and value is None:
        raise click.UsageError("--goal target needs --value, the response to aim at")
    value = 0.0 if value is None else value
    hold = _hold(hold, goal, modality, method, start_path)
    if modality == "image":
        _synthesize_images(twin_file, out, goal, n, roi, value, hold, model, method, steps, start_path, size, seed)
        return
    if pool_path is None:
        raise click.UsageError("--pool is required for sentences (--modality text)")
    import pandas as pd

    from twin import Twin
    from twin.cli import UserError, _features

    from .constraints import Constraints
    from .embedded import EmbeddedPool
    from .generate import Naturalness
    from .pool import load_pool
    from .selection import Goal
    from .synthesize import synthesize_sentences

    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    blocked = _blocklist(blocklist)
    twin = Twin.load(twin_file, model=model)
    if twin.modality != "text":
        raise UserError(f"twin '{twin_file}' models images; sentence synthesis needs a twin fit on sentences "
                        "(images: --modality image)")  # fmt: skip
    if roi is not None and roi not in twin.targets:
        raise UserError(f"--roi {roi!r} is not a target of this twin (targets: {', '.join(twin.targets)})")
    constraints = Constraints(min_words, max_words, charset or None, blocked, min_readability, max_readability,
                              max_similarity)  # fmt: skip
    shown = load_pool(exclude, min_words=1, max_words=10**6).sentences if exclude else []
    pool = load_pool(pool_path, column)
    click.echo(f"pool {pool_path}: {pool.summary()}")
    features = _features(twin.plan, cache, device)
    twin.attach(features)
    embedded = EmbeddedPool.build(pool.sentences, features)
    target = twin.targets.index(roi) if roi else 0
    result = synthesize_sentences(
        twin, embedded, n, Goal(goal, target, value, hold, acquisition, beta), constraints,
        exclude=set(shown), shown=shown, generate_budget=budget,
        naturalness=Naturalness(naturalness_model, max_nll=max_nll, device=device, max_edits=max_edits), seed=seed,
        progress=True,
    )  # fmt: skip
    with replaced_whole(out) as tmp:
        pd.DataFrame(result.rows).to_csv(tmp, index=False)
        if log_path and result.log:
            with replaced_whole(log_path) as log_tmp:
                pd.DataFrame([c.row() for c in result.log]).to_csv(log_tmp, index=False)
    generated = sum(r["source"] == "generated" for r in result.rows)
    name = twin.targets[target]
    values = [r[f"predicted_{name}"] for r in result.rows]
    click.echo(f"wrote {len(result.rows)} sentences ({generated} generated) to {out}; predicted {name} "
               f"{min(values):.3f} to {max(values):.3f}")  # fmt: skip


def _blocklist(text: str | None) -> list[str]:
    """--blocklist as its words or patterns: comma-separated, or one per line of the file after '@'."""
    from twin.cli import UserError

    if not text:
        return []
    if not text.startswith("@"):
        return [w.strip() for w in text.split(",") if w.strip()]
    path = Path(text[1:])
    if not path.is_file():
        raise UserError(f"--blocklist {text}: " + ("is a folder" if path.is_dir() else "no such file"))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"--blocklist {text}: not UTF-8 text (byte {exc.start})") from None
    return [w.strip() for w in lines if w.strip()]


def _hold(text: str, goal: str, modality: str, method: str, start: Path | None) -> float | None:
    """--hold as a number, or None for 'auto' (image control from --start only)."""
    from twin.cli import UserError

    if text.strip().lower() == "auto":
        if goal != "control" or modality != "image" or method != "gradient" or start is None:
            raise UserError("--hold auto works with --modality image --goal control --method gradient and --start "
                            "(the images the twin was fit on)")  # fmt: skip
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--hold must be a number or 'auto', got {text!r}") from None
    if not value >= 0:
        raise UserError(f"--hold must be 0 or more, got {text!r}")
    return value


def _synthesize_images(twin_file, out, goal, n, roi, value, hold, model, method, steps, start_path, size, seed) -> None:
    from twin.cli import IMAGE_SUFFIXES, UserError

    # the arguments first: a slip is told at once, before torch and the twin load
    if n < 1 or steps < 1 or size < 32:
        raise UserError(f"--n and --steps must be at least 1 and --size at least 32 (got {n}, {steps}, {size})")
    if not out.suffix:  # the PNGs' folder is OUT without its suffix: it would be OUT itself
        raise UserError(f"--out {out}: name the CSV to write, e.g. {out}.csv (the PNGs go in the folder '{out}')")
    files: list[Path] = []
    if start_path is not None:
        if not start_path.exists():
            raise UserError(f"--start {start_path}: no such image or folder")
        if method != "gradient":
            raise UserError("--start works with --method gradient only")
        files = sorted(f for f in start_path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) \
            if start_path.is_dir() else [start_path]  # fmt: skip
        if len(files) < n:
            raise UserError(f"--start {start_path}: {len(files)} image(s) found, --n {n} needs at least {n}")

    import shutil

    import numpy as np
    import pandas as pd
    from PIL import Image

    from twin import Twin
    from twin.vision import load_image

    from .images import best_starts, control_images, evolve_images, synthesize_images, twin_predictor
    from .selection import Goal

    twin = Twin.load(twin_file, model=model)
    if twin.modality != "image":
        raise UserError(f"twin '{twin_file}' models sentences; image synthesis needs a twin fit on images")
    if roi is not None and roi not in twin.targets:
        raise UserError(f"--roi {roi!r} is not a target of this twin (targets: {', '.join(twin.targets)})")
    target = twin.targets.index(roi) if roi else 0
    g = Goal(goal, target, value, 1.0 if hold is None else hold)
    predict = twin_predictor(twin)
    reference = next(iter(twin.readouts.values())).mean_y  # the training images' mean response
    start, images = None, None
    if start_path is not None:
        natural = [load_image(f, str(f)) for f in files]
        if hold is None:
            if len(twin.targets) < 2:
                raise UserError("--goal control needs a twin of two or more sites")
            control = control_images(predict, target, natural, n, steps=steps, size=size, seed=seed, progress=True)
            click.echo(f"hold chosen by the twin: {control.hold:g}")
            images = control.images
        else:
            start = best_starts(predict, g, natural, n, size, reference)
    if images is None and method == "gradient":  # (images already made: one-site control with the twin's hold)
        images = synthesize_images(predict, g, n, steps, size, reference=reference, seed=seed, progress=True,
                                   start=start)  # fmt: skip
    elif images is None:
        images = evolve_images(predict, g, n, steps, size, reference=reference, seed=seed, progress=True)
    folder = out.with_suffix("")
    tmp_dir = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    rows = []
    for i, item in enumerate(sorted(images, key=lambda it: -it.objective)):
        if not item.safety.ok or not np.isfinite(item.predicted).all():
            shutil.rmtree(tmp_dir)
            raise UserError(f"image {i} failed its final check ({item.safety}); nothing written")
        name = f"{goal}-{i:03d}.png"
        Image.fromarray(item.image).save(tmp_dir / name)
        row = {"rank": i + 1, "image": f"{folder.name}/{name}", "method": item.method, "objective": item.objective}
        row |= {f"predicted_{t}": float(v) for t, v in zip(twin.targets, item.predicted, strict=True)}
        row |= {"contrast_scale": item.contrast_scale, "safe": item.safety.ok}
        row |= {f"safety_{k}": round(v, 4) for k, v in item.safety.figures.items()}
        rows.append(row)
    if folder.exists():
        shutil.rmtree(folder)
    tmp_dir.replace(folder)
    with replaced_whole(out) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    click.echo(f"wrote {len(rows)} images to {folder}/ and their predictions and safety reports to {out}")
