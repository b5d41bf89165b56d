"""A twin's file: one HDF5 file (``format`` neurotwin.twin, version 2; see docs/ARCHITECTURE.md), written whole
or not at all, read with checks that name what is wrong. A twin with a reference twin keeps it in its group
``reference``."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any, BinaryIO

import h5py

from kit.formats import TWIN_FORMAT, TWIN_FORMAT_VERSION

from .errors import FeatureModelError, TwinFileError
from .hyperparameters import REFERENCE_BLOCK
from .paths import replaced_whole
from .plan import package_version, plan_from_json
from .projection import Projection
from .ridge import RidgeReadout

FORMAT = TWIN_FORMAT
FORMAT_VERSION = TWIN_FORMAT_VERSION


def write_twin(twin: Any, path: str | Path) -> None:
    """Write a twin to one HDF5 file (atomically: a temporary file, then rename)."""
    with replaced_whole(path) as tmp, h5py.File(tmp, "w") as f:
        _write(twin, f)


def _write(self: Any, f: h5py.Group) -> None:
    """A twin into an HDF5 file or group (its reference twin, if any, in the group 'reference')."""
    f.attrs.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        neurotwin_version=self.version,
        model_id=self.model_id,
        plan=self.plan.to_json(),
        targets=json.dumps(self.targets),
        training_hash=self.training_hash,
        scores=json.dumps(self.scores),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        n_noise=self.n_noise,
    )
    f["noise_var"] = self.noise_var
    f["stack_weights"] = self.stack_weights
    f["training_digests"] = self.training_digests
    if self.projection is not None:
        for key, value in self.projection.to_arrays().items():
            f.create_dataset(f"projection/{key}", data=value)
    blocks = f.create_group("blocks")
    for i, (name, readout) in enumerate(self.readouts.items()):
        g = blocks.create_group(f"{i:03d}")
        g.attrs["name"] = name
        for key, value in readout.state().items():
            g.create_dataset(key, data=value)
    if self.reference is not None:
        _write(self.reference, f.create_group("reference"))


def read_twin(cls: type, path: str | Path, model: str | None = None) -> Any:
    """A twin (of class ``cls``) from its file; with ``model``, fail unless the twin uses that feature model."""
    path = Path(path)
    if not path.exists():
        raise TwinFileError(f"twin file '{path}' does not exist")
    if path.is_dir():
        raise TwinFileError(f"twin file '{path}' is a folder; name a twin's .h5 file")
    if not path.is_file():
        raise TwinFileError(f"twin file '{path}' is not a regular file (a device or FIFO); name a twin's .h5 file")
    return _open(cls, path, str(path), model)


def twin_from_bytes(cls: type, data: bytes, name: str, model: str | None = None) -> Any:
    """A twin from the bytes of a twin file (``name`` says where they came from, in errors)."""
    return _open(cls, io.BytesIO(data), name, model)


def _open(cls: type, source: Path | BinaryIO, name: str, model: str | None) -> Any:
    try:
        f = h5py.File(source, "r")
    except OSError as exc:
        raise TwinFileError(
            f"twin file '{name}' is not a readable HDF5 file (truncated or corrupt?): {str(exc).splitlines()[0]}"
        ) from None
    with f:
        if (found := f.attrs.get("format")) != FORMAT:
            what = f" (its format is '{found}')" if isinstance(found, str) else ""
            raise TwinFileError(f"'{name}' is an HDF5 file but not a NeuroTwin twin{what}")
        twin = _read(cls, f, name)
    if model is not None:
        from .models import model_id_of

        wanted = model if twin.modality == "image" else model_id_of(model)
        if wanted != twin.model_id:
            raise FeatureModelError(f"twin file '{name}' uses feature model '{twin.model_id}', not '{wanted}'")
    return twin


def _read(cls: type, f: h5py.Group, path: Path | str) -> Any:
    """A twin from an HDF5 file or group written by :func:`_write`."""
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise TwinFileError(
            f"twin file '{path}' has format version {version}, written by neurotwin "
            f"{f.attrs.get('neurotwin_version')}; this neurotwin ({package_version()}) reads "
            f"version {FORMAT_VERSION}: refit the twin"
        )
    try:
        readouts = {}
        for key in sorted(f["blocks"]):
            g = f["blocks"][key]
            readouts[str(g.attrs["name"])] = RidgeReadout.from_state({k: g[k][()] for k in g})
        twin = cls(
            plan=plan_from_json(f.attrs["plan"]),
            model_id=str(f.attrs["model_id"]),
            targets=json.loads(f.attrs["targets"]),
            readouts=readouts,
            stack_weights=f["stack_weights"][()],
            noise_var=f["noise_var"][()],
            n_noise=int(f.attrs["n_noise"]),
            training_hash=str(f.attrs["training_hash"]),
            scores=json.loads(f.attrs["scores"]),
            version=str(f.attrs["neurotwin_version"]),
            training_digests=f["training_digests"][()],
        )
        if "projection" in f:
            arrays = {}
            f["projection"].visititems(
                lambda k, v: arrays.__setitem__(k, v[()]) if isinstance(v, h5py.Dataset) else None
            )
            twin.projection = Projection.from_arrays(arrays)
        if REFERENCE_BLOCK in readouts and "reference" not in f:
            raise KeyError("'reference': the twin has a reference block but no reference twin")
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise TwinFileError(f"twin file '{path}' is incomplete or damaged: {exc}") from None
    if "reference" in f:
        twin.reference = _read(cls, f["reference"], path)
    return twin
