"""The file formats NeuroTwin writes: each file's ``format`` tag (an HDF5 attribute or a JSON field) and the
version its readers accept. Readers refuse a file whose tag is another format's."""

from __future__ import annotations

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first 8 bytes of every HDF5 file

SESSION_FORMAT = "neurotwin.session"  # a session file (acquisition.SessionFile)
SESSION_FORMAT_VERSION = 1
TWIN_FORMAT = "neurotwin.twin"  # a twin file (twin.Twin.save)
TWIN_FORMAT_VERSION = 2
PRIOR_FORMAT = "neurotwin.prior"  # a prior: a twin's hyperparameters, JSON (twin.Prior)
PRIOR_FORMAT_VERSION = 1
FEATURES_FORMAT = "neurotwin.features"  # the feature cache (twin.FeatureCache)
