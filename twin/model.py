"""The text twin: pretrained-model features -> stacked ridge readouts -> predicted responses.

A twin has one ridge readout per feature block (a pooled hidden layer, or the
surprisal-and-length block). Each block's alpha is chosen per target by exact
leave-one-out; the blocks' predictions are combined with non-negative weights
fit on those LOO predictions (stacked regression), so layer choice and feature
combination are decided by inner cross-validation only.

Responses measured in separate runs (fMRI: each run has its own baseline) can be
fit within runs: a fixed effect per run is removed from responses and features
alike (Frisch-Waugh), so a run's offset never reads as a stimulus effect.

A twin may start from a reference twin (say, one fit on other people's data, as
Tuckute et al. 2024's model was): the reference's predictions become one more
block, weighted first, with the other blocks stacked on what it leaves, so the
new data decide how far to trust it, put it in their own units and correct it.
The whole twin stays one affine map of the features.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kit.formats import PRIOR_FORMAT, PRIOR_FORMAT_VERSION

from .errors import DataError, FeatureModelError, TwinFileError
from .hyperparameters import (
    REFERENCE_BLOCK,
    Hyperparameters,
    _as_2d,
    check_features,
    select_hyperparameters,
    transfer_hyperparameters,
    within_runs,
)
from .paths import replaced_whole
from .persistence import read_twin, twin_from_bytes, write_twin
from .plan import (
    FeaturePlan,
    TextFeatures,
    features_for,
    package_version,
    plan_from_json,
    stimulus_digests,
)
from .projection import Projection
from .ridge import DEFAULT_ALPHAS, RidgeReadout, loo_ridge, pearson_columns
from .scoring import kfold
from .vision import ImageFeatures, ImagePlan

MIN_TRAIN = 3  # training stimuli a twin needs (its readouts choose penalties by leave-one-out)


@dataclass
class Prior:
    """A twin's hyperparameters for other twins on the same features to borrow (``Twin.fit(prior=)``).

    Saved as a small JSON file (:meth:`save`, ``neurotwin twin prior``): penalties and stacking
    weights per block and target, no responses or statistics of them.
    """

    plan: FeaturePlan | ImagePlan
    model_id: str
    targets: list[str]
    n_train: int
    hyperparameters: Hyperparameters

    def check_compatible(self, plan: FeaturePlan | ImagePlan, model_id: str, what: str = "prior") -> None:
        """Raise FeatureModelError unless this prior is for the features of ``plan`` and ``model_id``."""
        check_features(self.plan, self.model_id, plan, model_id, what)

    def for_targets(self, columns: Sequence[int], names: Sequence[str]) -> Prior:
        """A copy for this prior's target ``columns`` (repeats allowed) under ``names``."""
        cols = list(columns)
        hp = self.hyperparameters
        picked = Hyperparameters({k: np.atleast_1d(v)[cols] for k, v in hp.alphas.items()}, hp.stack_weights[:, cols])
        return replace(self, targets=list(names), hyperparameters=picked)

    def to_json(self) -> str:
        hp = self.hyperparameters
        return json.dumps({
            "format": PRIOR_FORMAT, "format_version": PRIOR_FORMAT_VERSION, "model_id": self.model_id,
            "plan": json.loads(self.plan.to_json()), "targets": self.targets, "n_train": self.n_train,
            "alphas": {k: np.atleast_1d(v).tolist() for k, v in hp.alphas.items()},
            "stack_weights": hp.stack_weights.tolist(),
        }, indent=1)  # fmt: skip

    @classmethod
    def from_json(cls, text: str, where: str = "prior") -> Prior:
        """Parse :meth:`to_json`; TwinFileError naming ``where`` for anything else."""
        try:
            d = json.loads(text)
            if d.get("format") != PRIOR_FORMAT:
                raise TwinFileError(f"'{where}' is not a NeuroTwin prior (no format '{PRIOR_FORMAT}')")
            alphas = {k: np.asarray(v, np.float64) for k, v in d["alphas"].items()}
            weights = np.asarray(d["stack_weights"], np.float64)
            n_targets = len(d["targets"])
            if weights.shape != (len(alphas), n_targets) or any(a.shape != (n_targets,) for a in alphas.values()):
                raise TwinFileError(f"prior '{where}': alphas and stack_weights do not match {n_targets} target(s)")
            if (weights < 0).any() or any((a <= 0).any() for a in alphas.values()):
                raise TwinFileError(f"prior '{where}': alphas must be > 0 and stack_weights >= 0")
            plan = plan_from_json(json.dumps(d["plan"]))
            return cls(plan, str(d["model_id"]), list(d["targets"]), int(d["n_train"]),
                       Hyperparameters(alphas, weights))  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TwinFileError(f"prior '{where}' is not a readable prior file: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the prior as JSON (a temporary file, then rename)."""
        with replaced_whole(path) as tmp:
            tmp.write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Prior:
        """A prior from a prior file (JSON) or from a twin file (its hyperparameters)."""
        path = Path(path)
        if not path.exists():
            raise TwinFileError(f"prior file '{path}' does not exist")
        if path.suffix.lower() == ".json":
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise TwinFileError(f"prior file '{path}' is not readable text: {exc}") from None
            return cls.from_json(text, str(path))
        return Twin.load(path).as_prior()


@dataclass
class Twin:
    """A fitted encoding model (of sentences or images) of one or more target responses."""

    plan: FeaturePlan | ImagePlan
    model_id: str
    targets: list[str]
    readouts: dict[str, RidgeReadout]
    stack_weights: np.ndarray
    noise_var: np.ndarray
    n_noise: int
    training_hash: str = ""
    scores: dict = field(default_factory=dict)
    version: str = field(default_factory=package_version)
    training_digests: np.ndarray = field(default_factory=lambda: np.zeros((0, 16), np.uint8), repr=False)
    projection: Projection | None = field(default=None, repr=False)
    features: TextFeatures | ImageFeatures | None = field(default=None, repr=False)
    reference: Twin | None = field(default=None, repr=False)

    # ----- fitting -----
    @classmethod
    def fit(
        cls,
        sentences: Sequence,
        Y: np.ndarray,
        targets: Sequence[str] | None = None,
        plan: FeaturePlan | ImagePlan | None = None,
        features: TextFeatures | ImageFeatures | None = None,
        hyperparameters: Hyperparameters | None = None,
        alphas: np.ndarray = DEFAULT_ALPHAS,
        training_hash: str = "",
        runs: Sequence | None = None,
        reference: Twin | None = None,
        prior: Twin | Prior | None = None,
    ) -> Twin:
        """Fit on stimuli (sentences, or images with an ImagePlan) and responses (n, t).

        Hyperparameters are chosen by inner LOO unless given. ``runs``: a run label per
        row, to fit within runs (see :func:`within_runs`). ``reference``: a twin on the
        same features whose predictions join as one more block. ``prior``: a :class:`Prior`
        (or a twin) on the same features whose hyperparameters are reused, scaled
        (:func:`transfer_hyperparameters`).
        """
        features = features or features_for(plan or FeaturePlan())
        if prior is not None:  # before the features are computed
            prior.check_compatible(features.plan, features.model_id, "prior")
        blocks = features(sentences)
        twin = cls.fit_blocks(
            blocks, Y, targets, features.plan, features.model_id, hyperparameters, alphas, runs, reference, prior
        )
        twin.projection = features.projection
        twin.features = features
        twin.training_hash = training_hash
        twin.training_digests = stimulus_digests(list(sentences), images=isinstance(features, ImageFeatures))
        return twin

    @classmethod
    def fit_blocks(
        cls,
        blocks: dict[str, np.ndarray],
        Y: np.ndarray,
        targets: Sequence[str] | None,
        plan: FeaturePlan | ImagePlan,
        model_id: str,
        hyperparameters: Hyperparameters | None = None,
        alphas: np.ndarray = DEFAULT_ALPHAS,
        runs: Sequence | None = None,
        reference: Twin | None = None,
        prior: Twin | Prior | None = None,
    ) -> Twin:
        """Fit on precomputed feature blocks (within runs, if ``runs`` labels the rows), on a
        reference twin's predictions from them when one is given, and with a prior's
        hyperparameters, scaled, when one is given."""
        Y = _as_2d(Y)
        if len(Y) < MIN_TRAIN:
            raise DataError(f"a twin needs at least {MIN_TRAIN} training stimuli, got {len(Y)}")
        if isinstance(prior, Twin):
            prior = prior.as_prior()
        if prior is not None:
            prior.check_compatible(plan, model_id, "prior")
        if reference is not None:
            reference.check_compatible(plan, model_id)
            blocks = {**blocks, REFERENCE_BLOCK: reference.predict_blocks(blocks)[0]}
        if runs is not None:
            blocks, Y = within_runs(blocks, Y, runs)
        targets = list(targets) if targets is not None else [f"target{t}" for t in range(Y.shape[1])]
        if hyperparameters is None:
            if prior is not None:
                hyperparameters, stacked, chosen = transfer_hyperparameters(blocks, Y, prior.hyperparameters)
            else:
                hyperparameters, stacked = select_hyperparameters(blocks, Y, alphas)
            noise_var = ((Y - stacked) ** 2).mean(0)
            loo_r = pearson_columns(stacked, Y)
            scores = {"inner_loo_r": dict(zip(targets, map(float, loo_r), strict=False))}
            if prior is not None:
                scores["prior_n_train"] = prior.n_train
                scores["prior_multiplier"] = dict(zip(targets, map(float, chosen), strict=True))
            if runs is not None:
                scores["runs"] = len(np.unique(np.asarray(runs)))
        else:
            noise_var, scores = None, {}
        readouts = {name: RidgeReadout.fit(blocks[name], Y, hyperparameters.alphas[name]) for name in blocks}
        twin = cls(plan, model_id, targets, readouts, hyperparameters.stack_weights, np.zeros(Y.shape[1]), 0)
        twin.reference = reference
        if noise_var is None:  # fixed hyperparameters: in-sample residual variance
            noise_var = ((Y - twin.predict_blocks(blocks)[0]) ** 2).mean(0)
        twin.noise_var, twin.n_noise, twin.scores = noise_var, len(Y), scores
        return twin

    def check_compatible(self, plan: FeaturePlan | ImagePlan, model_id: str, what: str = "reference twin") -> None:
        """Raise FeatureModelError unless this twin reads the features of ``plan`` and ``model_id``."""
        check_features(self.plan, self.model_id, plan, model_id, what)

    def as_prior(self) -> Prior:
        """This twin's hyperparameters, for other twins to borrow (not a twin fit with a reference twin's)."""
        if self.reference is not None:
            raise FeatureModelError("a twin fit with a reference twin cannot be a prior: its hyperparameters cover "
                                    "the reference's block, which other twins do not have")  # fmt: skip
        return Prior(self.plan, self.model_id, list(self.targets), self.n_train, self.hyperparameters)

    def for_targets(self, columns: Sequence[int], names: Sequence[str]) -> Twin:
        """A copy predicting this twin's target ``columns`` (repeats allowed) under ``names``."""
        cols = list(columns)

        def pick(readout: RidgeReadout) -> RidgeReadout:
            state = readout.state()
            state.update({k: state[k][..., cols] for k in ("mean_y", "sxy", "syy", "alphas")})
            return RidgeReadout.from_state(state)

        return replace(
            self,
            targets=list(names),
            readouts={name: pick(r) for name, r in self.readouts.items()},
            stack_weights=self.stack_weights[:, cols],
            noise_var=self.noise_var[cols],
        )

    def _with_reference(self, blocks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.reference is None or REFERENCE_BLOCK in blocks:
            return blocks
        return {**blocks, REFERENCE_BLOCK: self.reference.predict_blocks(blocks)[0]}

    @property
    def hyperparameters(self) -> Hyperparameters:
        return Hyperparameters({k: r.alphas.copy() for k, r in self.readouts.items()}, self.stack_weights.copy())

    @property
    def n_train(self) -> int:
        return next(iter(self.readouts.values())).n

    # ----- prediction -----
    @property
    def modality(self) -> str:
        return "image" if isinstance(self.plan, ImagePlan) else "text"

    def _features(self) -> TextFeatures | ImageFeatures:
        if self.features is None:
            self.features = features_for(self.plan, self.projection)
        return self.features

    def feature_source(self) -> TextFeatures | ImageFeatures:
        """The feature computer this twin predicts with (made from its plan on first use)."""
        return self._features()

    def attach(self, features: TextFeatures | ImageFeatures) -> None:
        """Use these feature settings (cache, device, progress); the model must match the twin's.

        The twin's own plan and projection replace the ones ``features`` was made with.
        """
        if features.model_id != self.model_id:
            raise FeatureModelError(f"this twin was fit on features of '{self.model_id}', not '{features.model_id}'")
        if isinstance(features, ImageFeatures):
            if features.plan != self.plan:
                raise FeatureModelError(f"this twin uses image features {self.plan}, not {features.plan}")
        else:
            features.plan, features._projection = self.plan, self.projection
        self.features = features

    def sample(self, rng: np.random.Generator) -> Twin:
        """One draw from this twin's posterior, for Thompson sampling: a twin whose readouts' weights are
        drawn from their Bayesian ridge posteriors (:meth:`RidgeReadout.draw`; each block's on its own, all its
        weights together). It predicts, but is not refined or saved. A reference twin's own map is kept as it
        is; the weight this twin gives it is drawn."""
        return replace(self, readouts={name: r.draw(rng) for name, r in self.readouts.items()})

    def linear(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole twin as one affine map of concatenated blocks: ``predict = Z @ W + b``.

        Returns W (d, t) and b (t,), blocks in plan order (see :meth:`TextFeatures.split`); a
        reference twin's block is folded in through the reference's own affine map.
        """
        names = list(self.readouts)
        mean_y = self.readouts[names[0]].mean_y
        W, b = [], mean_y.copy()
        folded = None
        for i, name in enumerate(names):
            readout, w = self.readouts[name], self.stack_weights[i]
            if name == REFERENCE_BLOCK and self.reference is not None:
                W_ref, b_ref = self.reference.linear()
                folded = W_ref @ (readout.coef_ * w)
                b += w * (b_ref @ readout.coef_ + readout.intercept_ - mean_y)
                continue
            W.append(readout.coef_ * w)
            b += w * (readout.intercept_ - mean_y)
        W = np.vstack(W)
        return (W + folded if folded is not None else W), b

    def predict_blocks(
        self, blocks: dict[str, np.ndarray], with_sd: bool = False, noise: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions (m, t) from precomputed blocks, and the predictive SD when asked (``noise=False``: the
        SD of the predicted mean alone, the weights' uncertainty without the trial noise)."""
        blocks = self._with_reference(blocks)
        names = list(self.readouts)
        mean_y = self.readouts[names[0]].mean_y
        pred = np.tile(mean_y, (len(blocks[names[0]]), 1))
        epistemic = np.zeros_like(pred) if with_sd else None
        for b, name in enumerate(names):
            w = self.stack_weights[b]
            if not w.any():
                continue
            readout = self.readouts[name]
            pred += w * (readout.predict(blocks[name]) - mean_y)
            if with_sd:
                epistemic += w * readout.predict_sd(blocks[name], noise=False)
        sd = np.sqrt(self.noise_var * noise + epistemic**2) if with_sd else None
        return pred, sd

    def predict(
        self, sentences: Sequence, with_sd: bool = False, noise: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted responses (m, t) for sentences (or images), and the predictive SD (m, t) when asked
        (``noise=False``: of the predicted mean alone)."""
        return self.predict_blocks(self._features()(sentences), with_sd, noise)

    # ----- online refinement -----
    def update(self, sentences: Sequence, Y: np.ndarray) -> None:
        """Add new (stimulus, response) pairs: exact update of every readout, no refit.

        Rows are merged as measured: a twin fit within runs is fit again instead (as the session
        runner does for sentences), since an update cannot remove a run offset."""
        self.update_blocks(self._features()(sentences), Y)
        digests = stimulus_digests(list(sentences), images=self.modality == "image")
        self.training_digests = np.vstack([self.training_digests, digests])

    def update_blocks(self, blocks: dict[str, np.ndarray], Y: np.ndarray) -> None:
        Y = _as_2d(Y)
        if Y.shape[1] != len(self.targets):
            raise ValueError(f"update expects {len(self.targets)} response column(s), got {Y.shape[1]}")
        blocks = self._with_reference(blocks)
        # Residuals before the update are out-of-sample: they refine the noise variance.
        resid = Y - self.predict_blocks(blocks)[0]
        total = self.n_noise + len(Y)
        self.noise_var = (self.noise_var * self.n_noise + (resid**2).sum(0)) / total
        self.n_noise = total
        for name, readout in self.readouts.items():
            readout.update(blocks[name], Y)

    def reselect_alphas(self, alphas: np.ndarray = DEFAULT_ALPHAS) -> None:
        """Re-choose each block's alpha by GCV from its statistics (stacking weights kept)."""
        for readout in self.readouts.values():
            readout.gcv_select(alphas)

    # ----- persistence (twin.persistence) -----
    def save(self, path: str | Path) -> None:
        """Write the twin to one HDF5 file (atomically: a temporary file, then rename)."""
        write_twin(self, path)

    @classmethod
    def load(cls, path: str | Path, model: str | None = None) -> Twin:
        """Read a twin file; with ``model``, fail unless the twin uses that feature model."""
        return read_twin(cls, path, model)

    @classmethod
    def from_bytes(cls, data: bytes, name: str, model: str | None = None) -> Twin:
        """A twin from the bytes of a twin file (``name`` says where they came from, in errors)."""
        return twin_from_bytes(cls, data, name, model)


def cross_validated_predictions(
    blocks: dict[str, np.ndarray],
    Y: np.ndarray,
    n_folds: int = 10,
    seed: int = 0,
    groups: Sequence | None = None,
    alphas: np.ndarray = DEFAULT_ALPHAS,
) -> np.ndarray:
    """Out-of-fold predictions (n, t) of the whole twin recipe: every choice made inside each training fold."""
    Y = _as_2d(Y)
    out = np.empty_like(Y)
    plan = FeaturePlan(layers=(), surprisal=False)  # not used: the blocks are given
    for test in kfold(len(Y), n_folds, seed, groups):
        train = np.setdiff1d(np.arange(len(Y)), test)
        twin = Twin.fit_blocks({k: v[train] for k, v in blocks.items()}, Y[train], None, plan, "", alphas=alphas)
        out[test] = twin.predict_blocks({k: v[test] for k, v in blocks.items()})[0]
    return out


def baseline_predictions(
    X: np.ndarray, Y: np.ndarray, n_folds: int = 10, seed: int = 0, groups: Sequence | None = None
) -> np.ndarray:
    """Out-of-fold predictions of a plain ridge on X (alpha by inner LOO), on the twin's folds."""
    Y = _as_2d(Y)
    out = np.empty_like(Y)
    for test in kfold(len(Y), n_folds, seed, groups):
        train = np.setdiff1d(np.arange(len(Y)), test)
        alpha = loo_ridge(X[train], Y[train]).best_alpha
        out[test] = RidgeReadout.fit(X[train], Y[train], alpha).predict(X[test])
    return out
