"""Fast ground-truth subjects for bridge tests (no model loading)."""

import numpy as np


def length_subject(stimuli):
    """Two ROIs: words / 10, and a constant."""
    return np.array([[len(s.split()) / 10, 0.5] for s in stimuli])


length_subject.rois = ("lang", "md")
length_subject.noise_sd = 0.2


def nan_image_model():
    """An image feature network that produces NaN (for the bad-input tests)."""
    import torch

    from twin.vision import VisionModel

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.conv.weight.data.fill_(float("nan"))  # e.g. weights that diverged in training

        def forward(self, x):
            return self.conv(x)

    return VisionModel(Broken(), 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ("conv",))


def length_language_subject(stimuli):
    """A fast language subject: longer sentences drive 'lang'; 'md' is constant."""
    return np.array([[0.5 + 0.05 * len(s.split()), 0.5] for s in stimuli])


length_language_subject.rois = ("lang", "md")
length_language_subject.noise_sd = 0.3


def luminance_sites(stimuli):
    """A fast visual subject: site0 fires for bright images, site1 for dark ones (spikes/s)."""
    rows = []
    for s in stimuli:
        m = float(np.asarray(s, np.float64).mean() / 255.0) if not isinstance(s, str) else 0.5
        rows.append([5.0 + 60.0 * m, 5.0 + 60.0 * (1.0 - m)])
    return np.array(rows)


luminance_sites.rois = ("site0", "site1")


def bright_sites(stimuli):
    """The luminance sites four times as strongly tuned (so Poisson noise matters less to a short test)."""
    return 5.0 + 4.0 * (luminance_sites(stimuli) - 5.0)


bright_sites.rois = luminance_sites.rois


def broken_language_subject(stimuli):
    """A subject that loads but fails on its first stimulus (a user's subject with a bug)."""
    raise RuntimeError("this subject's weights are missing")


broken_language_subject.rois = ("lang", "md")


def slow_subject(stimuli):
    """A subject that takes 3 s a stimulus (a large model on a busy machine): words / 10, and a constant."""
    import time

    time.sleep(3.0 * len(stimuli))
    return length_subject(stimuli)


slow_subject.rois = ("lang", "md")
slow_subject.noise_sd = 0.2
