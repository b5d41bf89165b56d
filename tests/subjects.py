"""Fast ground-truth subjects for bridge tests (no model loading)."""

import numpy as np


def length_subject(stimuli):
    """Two ROIs: words / 10, and a constant."""
    return np.array([[len(s.split()) / 10, 0.5] for s in stimuli])


length_subject.rois = ("lang", "md")
length_subject.noise_sd = 0.2
