"""``neurotwin twin ...``: fit, score and predict with a text twin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from kit.cli import OutputFile, UserError

from .paths import replaced_whole


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """'4-24:2' -> 4, 6, ..., 24; '4,8,12' -> 4, 8, 12; None or 'auto' -> model default."""
    if text is None or text.strip().lower() == "auto":
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                span, _, step = part.partition(":")
                lo, hi = (int(x) for x in span.split("-"))
                layers.extend(range(lo, hi + 1, int(step or 1)))
            else:
                layers.append(int(part))
    except ValueError:
        raise UserError(f"--layers: cannot read {text!r}; use e.g. '4-24:2' or '4,8,12'") from None
    if not layers or min(layers) < 0:
        raise UserError(f"--layers: {text!r} gives no valid layer")
    return tuple(sorted(set(layers)))


def _features(plan, cache: str | None, device: str, dtype: str | None = None):
    from .paths import default_feature_cache
    from .plan import features_for

    cache_path = None if cache == "none" else Path(cache) if cache else default_feature_cache()
    return features_for(plan, cache=cache_path, device=device, progress=True, dtype=dtype)


cache_option = click.option(
    "--cache",
    default=None,
    help="Feature cache file (default: $NEUROTWIN_CACHE/features.h5); 'none' to disable.",
)
device_option = click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
dtype_option = click.option(
    "--dtype", type=click.Choice(["float32", "bfloat16", "auto"]), default=None,
    help="What text models compute in: auto is bfloat16 where the CPU (AVX512-BF16, AMX) or GPU computes it "
         "natively, float32 elsewhere. Default: $NEUROTWIN_DTYPE, else float32.",
)  # fmt: skip


@click.group(name="twin")
def twin_group() -> None:
    """Fit, score and use an encoding model of sentences or images (the twin)."""


@twin_group.command("fit")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=OutputFile(), help="Twin file to write (.h5).")
@click.option("--model", default="smollm2-135m", show_default=True,
              help="Offline alias, Hugging Face name or folder; several comma-separated to stack their blocks "
                   "(e.g. smollm2-135m,gemma3-270m).")  # fmt: skip
@click.option("--layers", default=None, help="Layers, e.g. '4-24:2' (default: every other middle layer).")
@click.option("--pooling", default="last", show_default=True, help="Token pooling: last, mean, or 'last,mean'.")
@click.option("--surprisal/--no-surprisal", default=None, help="Surprisal statistics (default: on for causal LMs).")
@click.option("--length/--no-length", default=True, show_default=True, help="Sentence length in the stats block.")
@click.option("--components", default=32, show_default=True,
              help="Principal components read per layer (0: the whole layer).")  # fmt: skip
@click.option("--targets", default=None, help="Response columns to model (default: all but sentence/group).")
@cache_option
@device_option
@dtype_option
@click.option("--modality", type=click.Choice(["text", "image"]), default="text", show_default=True,
              help="Sentences, or images (CSV column 'image': paths relative to the CSV).")  # fmt: skip
@click.option("--grid", default=3, show_default=True, help="Images: spatial pooling grid per layer.")
@click.option("--prior", type=click.Path(path_type=Path), default=None,
              help="A prior file (neurotwin twin prior) or twin file on the same features whose penalties and "
                   "stacking weights to reuse, scaled to these data: for few or noisy responses.")  # fmt: skip
def fit_cmd(data, out, model, layers, pooling, surprisal, length, components, targets, cache, device, dtype,
            modality, grid, prior) -> None:  # fmt: skip
    """Fit a twin on DATA (CSV: 'sentence' or 'image' plus response columns). Duplicates are averaged.

    Images: --model efficientnet-lite0 (default for images), gabor-v1, or module:attr
    (any torch nn.Module, e.g. a torchvision or timm network with your weights) and
    --layers as its module names, comma-separated.
    """
    from .data import load_dataset
    from .errors import FeatureModelError
    from .model import Prior, Twin
    from .plan import plan_for

    borrowed = Prior.load(prior) if prior is not None else None
    if modality == "image":
        _fit_images(data, out, model, layers, grid, targets, device, prior, borrowed)
        return

    dataset = load_dataset(data, targets.split(",") if targets else None)
    _enough(data, len(dataset), "unique sentence(s)")
    poolings = tuple(p.strip() for p in pooling.split(","))
    if any(p not in ("last", "mean") for p in poolings):
        raise UserError(f"--pooling: {pooling!r}; choose last, mean or 'last,mean'")
    if components < 0:
        raise UserError(f"--components must be 0 (whole layers) or more, got {components}")
    try:
        plan = plan_for(model, layers=parse_layers(layers), poolings=poolings, surprisal=surprisal, length=length,
                        components=components or None)  # fmt: skip
    except FeatureModelError as exc:
        raise UserError(f"--model: {exc}") from None
    features = _features(plan, cache, device, dtype)
    features.check_layers()
    twin = Twin.fit(
        dataset.sentences, dataset.responses, dataset.targets, features=features, training_hash=dataset.digest(),
        prior=borrowed,
    )  # fmt: skip
    twin.save(out)
    click.echo(f"fit {len(dataset)} unique sentences, targets: {', '.join(dataset.targets)}")
    _echo_prior(twin, prior, borrowed)
    for target, r in twin.scores["inner_loo_r"].items():
        click.echo(f"  {target}: inner leave-one-out r = {r:.3f}")
    used = [name for name, w in zip(twin.readouts, twin.stack_weights.max(1), strict=False) if w > 0]
    click.echo(f"  feature blocks with weight: {', '.join(used)}")
    click.echo(f"wrote {out}")


def _enough(data: Path, n: int, what: str) -> None:
    """Refuse, before any features are computed, training data too small for a twin."""
    from .data import DataError
    from .model import MIN_TRAIN

    if n < MIN_TRAIN:
        raise DataError(f"'{data}' has {n} {what}; a twin needs at least {MIN_TRAIN}")


def _echo_prior(twin: Any, path: Path | None, prior: Any) -> None:
    """Say how the prior's penalties were scaled to the data."""
    if prior is None:
        return
    scale = twin.scores["prior_multiplier"].values()
    click.echo(f"  hyperparameters from {path} ({prior.n_train} training stimuli), "
               f"penalties x{', x'.join(f'{m:.3g}' for m in scale)}")  # fmt: skip


@twin_group.command("prior")
@click.argument("twin_file", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=OutputFile(), help="Prior file to write (.json).")
def prior_cmd(twin_file: Path, out: Path) -> None:
    """Write TWIN_FILE's hyperparameters (penalties, stacking weights) as a prior for other twins to borrow.

    The prior holds no responses: share it where the twin's data may not go. Use it with
    `twin fit --prior` or a protocol's [twin] prior.
    """
    from .model import Twin

    prior = Twin.load(twin_file).as_prior()
    prior.save(out)
    used = [name for name, w in zip(prior.hyperparameters.alphas, prior.hyperparameters.stack_weights.max(1),
                                    strict=True) if w > 0]  # fmt: skip
    click.echo(f"wrote {out}: {prior.model_id}, targets {', '.join(prior.targets)}, {prior.n_train} training "
               f"stimuli, blocks with weight {', '.join(used)}")  # fmt: skip


def _fit_images(data: Path, out: Path, model: str, layers: str | None, grid: int, targets: str | None,
                device: str, prior_path: Path | None = None, prior: Any = None) -> None:  # fmt: skip
    from .data import load_dataset
    from .model import Twin
    from .vision import ImagePlan

    dataset = load_dataset(data, targets.split(",") if targets else None, column="image")  # as `twin score` reads it
    _enough(data, len(dataset), "unique image(s)")
    model = "efficientnet-lite0" if model == "smollm2-135m" else model
    plan = ImagePlan(model=model, layers=tuple(x.strip() for x in layers.split(",")) if layers else None, grid=grid)
    twin = Twin.fit(dataset.sentences, dataset.responses, dataset.targets, features=_features(plan, None, device),
                    training_hash=dataset.digest(), prior=prior)  # fmt: skip
    twin.save(out)
    click.echo(f"fit {len(dataset)} unique images on {model} ({', '.join(twin.plan.layers or ())}), "
               f"targets: {', '.join(dataset.targets)}")  # fmt: skip
    _echo_prior(twin, prior_path, prior)
    for target, r in twin.scores["inner_loo_r"].items():
        click.echo(f"  {target}: inner leave-one-out r = {r:.3f}")
    click.echo(f"wrote {out}")


@twin_group.command("score")
@click.argument("twin_file", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--folds", default=10, show_default=True, help="Outer cross-validation folds.")
@click.option("--seed", default=0, show_default=True, help="Fold assignment seed.")
@click.option("--json", "json_out", type=OutputFile(), default=None, help="Also write the scores here.")
@cache_option
@device_option
@dtype_option
def score_cmd(twin_file, data, folds, seed, json_out, cache, device, dtype) -> None:
    """Held-out r per target, with baselines and (given repeats) the noise ceiling.

    Sentences the twin was trained on are scored by cross-validating the twin's
    recipe; new sentences are scored on the fitted twin's predictions. An image twin
    reads DATA's 'image' column (paths relative to it) and is compared with the images'
    mean luminance and RMS contrast.
    """
    from .data import load_dataset
    from .model import Twin
    from .report import score_report

    twin = Twin.load(twin_file)
    dataset = load_dataset(data, twin.targets, column="image" if twin.modality == "image" else "sentence")
    twin.attach(_features(twin.plan, cache, device, dtype))
    report = score_report(twin, dataset, folds=folds, seed=seed)
    click.echo(report.text())
    if json_out:
        with replaced_whole(json_out) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2))
        click.echo(f"wrote {json_out}")


@twin_group.command("predict")
@click.argument("twin_file", type=click.Path(path_type=Path))
@click.argument("sentences", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=OutputFile(), help="CSV to write.")
@click.option("--model", default=None, help="Fail unless the twin uses this feature model.")
@cache_option
@device_option
@dtype_option
def predict_cmd(twin_file, sentences, out, model, cache, device, dtype) -> None:
    """Predict responses to SENTENCES (one per line): a CSV with each target and its predictive SD.

    An image twin reads a folder of images (.png, .jpg) or a CSV with an 'image' column (paths
    relative to the CSV) instead."""
    import pandas as pd

    from .data import load_sentences
    from .model import Twin

    twin = Twin.load(twin_file, model=model)
    if twin.modality == "image":
        column, (names, stimuli) = "image", _image_inputs(sentences)
    else:
        column, stimuli = "sentence", load_sentences(sentences)
        names = stimuli
    twin.attach(_features(twin.plan, cache, device, dtype))
    mean, sd = twin.predict(stimuli, with_sd=True)
    table = {column: names}
    for t, name in enumerate(twin.targets):
        table[name] = np.round(mean[:, t], 6)
        table[f"{name}_sd"] = np.round(sd[:, t], 6)
    with replaced_whole(out) as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    click.echo(f"predicted {len(stimuli)} {column}s -> {out}")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_inputs(source: Path) -> tuple[list[str], list[str]]:
    """Names and paths of the images to predict: a folder's image files (sorted), or a CSV's 'image' column
    (paths relative to the CSV)."""
    import pandas as pd

    from .data import DataError

    if source.is_dir():
        files = sorted(f for f in source.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"folder '{source}' has no images ({', '.join(IMAGE_SUFFIXES)})")
        return [str(f) for f in files], [str(f) for f in files]
    if not source.exists():
        raise DataError(f"'{source}' does not exist")
    try:
        frame = pd.read_csv(source)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"'{source}' is not a readable CSV: {exc}") from None
    if "image" not in frame.columns or frame.empty:
        raise DataError(f"'{source}' has no 'image' column or no rows (columns: {', '.join(map(str, frame.columns))}; "
                        f"{len(frame)} rows) (or give a folder of images)")  # fmt: skip
    names = frame["image"].astype(str).tolist()
    return names, [str(source.parent / name) for name in names]  # an absolute name stays itself
