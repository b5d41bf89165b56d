"""The twin's learning during a session: what it was fit on, and how each run refines it.

Baseline data waits for the first fit (when a closed-loop run needs a twin); each later run refines it, by the
modality's rule: sentences are fit again on every trial so far (alphas and stacking weights chosen again, the
features from the cache, within runs because each fMRI run's estimates share an offset of their own), so a
resumed session has the same twin; images are updated online, exactly, and their penalties chosen again by GCV.
Before any data a session with a reference twin uses the reference alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .modality import Modality
from .protocol import Protocol, reference_for_rois


class TwinUpdater:
    """The session's twin (None until one is needed), its training data and its refinement."""

    def __init__(self, protocol: Protocol, modality: Modality, rois: list[str], features: Any,
                 reference: Any = None, prior: Any = None) -> None:  # fmt: skip
        self.protocol = protocol
        self.modality = modality
        self.rois = rois
        self.features = features
        self.reference = reference  # the protocol's twin.reference
        self.prior = prior  # the protocol's twin.prior (a target per ROI)
        self.twin: Any = None
        self._stimuli: list[Any] = []
        self._responses: list[np.ndarray] = []  # one array per run

    def learn(self, kind: str, stimuli: list[Any], Y: np.ndarray) -> None:
        """A run's measured responses (trials x ROIs) to its stimuli; localizer runs teach nothing."""
        if kind == "localizer" or not stimuli:
            return
        reference_only = not self._stimuli  # a twin before any data is the reference alone
        self._stimuli.extend(stimuli)
        self._responses.append(np.asarray(Y, np.float64))
        if self.twin is None:
            return
        if self.modality.refits() or reference_only:
            self.twin = None
            self.ensure()
        else:
            self.twin.update(stimuli, Y)
            self.twin.reselect_alphas()  # the ridge penalty follows the growing training set

    def ensure(self) -> Any:
        """The twin, fit now if there is data and none yet (or the reference alone, before any data)."""
        from twin import Twin

        if self.twin is None and self._stimuli:
            Y = self._responses
            runs = np.repeat(np.arange(len(Y)), [len(y) for y in Y]) if self.modality.refits() else None
            self.twin = Twin.fit(self._stimuli, np.vstack(Y), self.rois, features=self.features, runs=runs,
                                 reference=self.reference, prior=self.prior)  # fmt: skip
        elif self.twin is None and self.reference is not None:
            self.twin = reference_for_rois(self.reference, self.rois, self.protocol)
        return self.twin

    def scores(self, run_trials: int, target: int) -> dict:
        """What a twin snapshot records after a run: its training-set size, the run's trials and, for a fit with
        a prior, the target ROI's penalty multiplier."""
        out = {"n_train": int(self.twin.n_train), "run_trials": run_trials}
        if self.prior is not None and self.modality.refits() and "prior_multiplier" in self.twin.scores:
            out["penalties_x_prior"] = self.twin.scores["prior_multiplier"][self.rois[target]]
        return out
