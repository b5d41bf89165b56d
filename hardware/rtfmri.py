"""Real-time fMRI from a scanner's export folder: each volume read once it is complete, averaged in ROI masks.

A scanner's real-time export writes one file per volume into a folder. :func:`read_volume` reads one (NIfTI with
nibabel): a file still being written raises :class:`IncompleteVolume` (try it again later, never misread it), one
that is not a volume :class:`VolumeError`. :class:`RoiMasks` holds the ROI masks (NIfTI, in the volumes' space),
refuses a volume of another geometry naming both, and gives each ROI's mean. :func:`new_volumes` watches the folder
and yields each new volume's file once it has stopped growing, in the order of their names.

A volume's acquisition time is read from its NIfTI header's ``descrip`` field when it holds ``time=<Unix
seconds>`` (as NeuroTwin's simulated export writes it); otherwise the file's arrival stands for it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz")
_TIME = re.compile(rb"time=([0-9]+(?:\.[0-9]+)?)")
_NUMBER = re.compile(r"(\d+)(?=\.nii(?:\.gz)?$)")


class VolumeError(ValueError):
    """A file that is not a readable volume (corrupt, or not 3-D), named with why."""


class IncompleteVolume(VolumeError):
    """A volume file that is still being written (shorter than its header says): read it again later."""


class MaskError(ValueError):
    """An ROI mask that cannot be used with the volumes (unreadable, empty, or of another geometry)."""


@dataclass
class Volume:
    """One volume: its voxels (x, y, z), voxel-to-scanner affine, number (from the file name) and acquisition
    time (from the header; None if it does not say)."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    number: int | None
    time: float | None


def is_volume_file(path: Path) -> bool:
    """Whether a file's name says it is a volume (NIfTI)."""
    return path.name.endswith(VOLUME_SUFFIXES) and not path.name.startswith(".")


def read_volume(path: str | Path) -> Volume:
    """The volume in ``path``; IncompleteVolume while the file is shorter than its header says, VolumeError for
    anything else that is not a 3-D volume."""
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except (EOFError, OSError) as exc:  # a gzip stream or file cut short
        raise IncompleteVolume(f"'{path.name}' is incomplete ({exc})") from None
    except nib.filebasedimages.ImageFileError as exc:
        raise VolumeError(f"'{path.name}' is not a NIfTI volume ({exc})") from None
    except ValueError as exc:  # nibabel: fewer bytes than the header's shape needs
        if "bytes" in str(exc) or "truncated" in str(exc).lower():
            raise IncompleteVolume(f"'{path.name}' is incomplete ({exc})") from None
        raise VolumeError(f"'{path.name}' cannot be read: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"'{path.name}' is {data.ndim}-D ({'x'.join(map(str, data.shape))}); a volume is 3-D")
    if not np.isfinite(data).all():
        raise VolumeError(f"'{path.name}' has voxels that are not finite numbers")
    found = _TIME.search(bytes(image.header["descrip"]))
    number = _NUMBER.search(path.name)
    return Volume(path, data, np.asarray(image.affine, np.float64), int(number[1]) if number else None,
                  float(found[1]) if found else None)  # fmt: skip


def geometry(shape: tuple[int, ...], affine: np.ndarray) -> str:
    """A volume's geometry as a person reads it: voxels, their size and the affine's origin."""
    sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return (f"{'x'.join(map(str, shape))} voxels of {'x'.join(f'{s:g}' for s in np.round(sizes, 3))} mm, origin "
            f"({', '.join(f'{o:g}' for o in np.round(np.asarray(affine)[:3, 3], 2))})")  # fmt: skip


class RoiMasks:
    """ROI masks (name -> NIfTI file, voxels > 0.5 inside), each ROI's mean over a volume's voxels."""

    def __init__(self, masks: dict[str, str | Path]) -> None:
        import nibabel as nib

        if not masks:
            raise MaskError("give at least one ROI mask")
        self.names = list(masks)
        self.files = {name: Path(p) for name, p in masks.items()}
        self.inside: dict[str, np.ndarray] = {}
        self.shape: tuple[int, ...] | None = None
        self.affine: np.ndarray | None = None
        for name, path in self.files.items():
            try:
                image = nib.load(path)
                inside = np.asarray(image.dataobj, dtype=np.float32)
            except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
                raise MaskError(f"ROI mask '{name}' ({path}) cannot be read: {exc}") from None
            inside = inside[..., 0] if inside.ndim == 4 and inside.shape[3] == 1 else inside
            if inside.ndim != 3 or not (inside > 0.5).any():
                raise MaskError(f"ROI mask '{name}' ({path}) is {'not 3-D' if inside.ndim != 3 else 'empty'}")
            if self.shape is None:
                self.shape, self.affine = inside.shape, np.asarray(image.affine, np.float64)
            elif inside.shape != self.shape or not np.allclose(image.affine, self.affine, atol=1e-3):
                first = self.names[0]
                raise MaskError(f"ROI masks '{first}' ({geometry(self.shape, self.affine)}) and '{name}' "
                                f"({geometry(inside.shape, image.affine)}) are not in the same space")  # fmt: skip
            self.inside[name] = inside > 0.5

    def check(self, volume: Volume) -> None:
        """Raise MaskError, naming both, unless ``volume`` has the masks' voxels and affine."""
        assert self.shape is not None and self.affine is not None
        if volume.data.shape != self.shape or not np.allclose(volume.affine, self.affine, atol=1e-3):
            name = self.names[0]
            raise MaskError(f"the volume '{volume.path.name}' ({geometry(volume.data.shape, volume.affine)}) is not "
                            f"in the space of ROI mask '{name}' ({self.files[name]}: "
                            f"{geometry(self.shape, self.affine)})")  # fmt: skip

    def means(self, data: np.ndarray) -> list[float]:
        """Each ROI's mean over ``data`` (in the masks' space), in the order of the masks."""
        return [float(data[self.inside[name]].mean()) for name in self.names]


def new_volumes(folder: str | Path, poll: float = 0.05, patience: float = 5.0, existing: bool = False
                ) -> Iterator[Volume | VolumeError]:  # fmt: skip
    """Each volume file that appears in ``folder`` (waited for, if it does not exist yet), read once complete, in
    the order of the files' names; a file that cannot be read ``patience`` s after it last grew comes as its
    VolumeError. Files there before the call are skipped unless ``existing`` (a folder made after it is all new)."""
    folder = Path(folder)
    made_later = not folder.is_dir()  # (then every file in it is new, however soon after its making it is seen)
    while not folder.is_dir():
        time.sleep(poll)
    done: set[str] = set() if existing or made_later else {p.name for p in folder.iterdir()}
    sizes: dict[str, tuple[int, float]] = {}  # name -> (size at the last look, when it last changed)
    while True:
        now = time.monotonic()
        # (in the order of their names: a file not ready yet holds back the ones after it)
        for path in sorted(p for p in folder.iterdir() if p.name not in done and is_volume_file(p)):
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # (renamed or removed meanwhile)
                continue
            seen = sizes.get(path.name)
            if seen is None or seen[0] != size:
                sizes[path.name] = (size, now)
                break  # (growing, or just seen: looked at again at the next poll)
            try:
                volume = read_volume(path)
            except IncompleteVolume as exc:
                if now - seen[1] < patience:
                    break
                volume = VolumeError(f"{exc}, and has not grown for {patience:g} s: skipped")
            except VolumeError as exc:
                volume = exc
            done.add(path.name)
            sizes.pop(path.name, None)
            yield volume
        time.sleep(poll)


def volume_lines(folder: str | Path, masks: RoiMasks, clock: Callable[[], float], latency: float = 0.0,
                 poll: float = 0.02, patience: float = 5.0, existing: bool = False) -> Iterator[str]:  # fmt: skip
    """Each new volume in ``folder`` as a relay line (``time mean mean ...``, a mean per ROI): its acquisition time
    from its header, else its arrival on ``clock`` minus ``latency``. A file that is not a volume is logged and
    skipped (its volume is missing); a volume of another geometry than the masks raises RuntimeError, naming both."""
    for volume in new_volumes(folder, poll, patience, existing):
        if isinstance(volume, VolumeError):
            log.error("%s: its volume is missing", volume)
            continue
        try:
            masks.check(volume)
        except MaskError as exc:
            raise RuntimeError(str(exc)) from None
        when = volume.time if volume.time is not None else clock() - latency
        yield " ".join([repr(when), *map(repr, masks.means(volume.data))]) + "\n"
