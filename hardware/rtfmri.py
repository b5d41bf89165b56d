"""Real-time fMRI from a scanner's export folder: each volume read once it is complete, realigned, averaged in ROIs.

A scanner's real-time export writes one file per volume (NIfTI, or DICOM: a Siemens mosaic, an enhanced multi-frame
image) or one file per slice (single-frame DICOM) into a folder. :func:`read_volume` reads one file (NIfTI with
nibabel, DICOM with pydicom and nibabel's DICOM geometry): a file still being written raises
:class:`IncompleteVolume` (try it again later, never misread it), one that is not a volume :class:`VolumeError`.
:class:`RoiMasks` holds the ROI masks (NIfTI, in the volumes' space), refuses a volume of another geometry naming
both, and gives each ROI's mean. :func:`new_volumes` watches the folder and yields each new volume once its files
have stopped growing, in the order of their names (a volume's slices stacked once all have come).
:class:`Realigner` realigns each volume to a reference volume (rigid, with SimpleITK) and gives its motion
parameters and framewise displacement.

A volume's acquisition time: DICOM's AcquisitionDateTime (or AcquisitionDate and AcquisitionTime; UTC when
TimezoneOffsetFromUTC says so, else local time), or a NIfTI header's ``descrip`` field holding ``time=<Unix
seconds>`` (as NeuroTwin's simulated export writes it); otherwise the file's arrival stands for it. Its number:
DICOM's AcquisitionNumber, else the last number in the file's name.
"""

from __future__ import annotations

import datetime
import logging
import re
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".ima")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES
_TIME = re.compile(rb"time=([0-9]+(?:\.[0-9]+)?)")
_NUMBER = re.compile(r"(\d+)(?=\.(?:nii|nii\.gz|dcm|ima)$)", re.I)
_DATETIME = re.compile(r"^(\d{8,14})(?:\.(\d{1,6}))?([+-]\d{4})?$")  # DICOM's DT: YYYYMMDDHHMMSS.FFFFFF&ZZXX
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM's patient space (LPS) to NIfTI's (RAS)
MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]  # mm, radians (fMRIPrep's confound names)
FD = "framewise_displacement"  # mm (Power et al. 2012: rotations as arcs on a 50-mm sphere)
HEAD_RADIUS = 50.0
MAX_SHIFT, MAX_ROTATION = 25.0, 25.0  # mm, degrees: beyond these from the reference, a realignment lost the head


class VolumeError(ValueError):
    """A file that is not a readable volume (corrupt, or not 3-D), named with why."""


class IncompleteVolume(VolumeError):
    """A volume file that is still being written (shorter than its header says): read it again later."""


class MaskError(ValueError):
    """An ROI mask that cannot be used with the volumes (unreadable, empty, or of another geometry)."""


@dataclass
class Volume:
    """One volume: its voxels (x, y, z), voxel-to-scanner (RAS) affine, number and acquisition time (from the
    headers; None if they do not say). A single-frame DICOM file holds one slice: ``data`` is 2-D, ``position`` its
    place along the slice normal (mm) and ``series`` the series it belongs to, until :func:`stack_slices`."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    number: int | None
    time: float | None
    position: float | None = None
    series: str | None = None


def is_volume_file(path: Path) -> bool:
    """Whether a file's name says it is a volume or a slice (NIfTI, DICOM)."""
    return path.name.lower().endswith(VOLUME_SUFFIXES) and not path.name.startswith(".")


def read_volume(path: str | Path) -> Volume:
    """The volume (or single-frame DICOM slice) in ``path``; IncompleteVolume while the file is shorter than its
    header says, VolumeError for anything else that is not a volume."""
    path = Path(path)
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return _read_dicom(path)
    return _read_nifti(path)


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

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


def _read_dicom(path: Path) -> Volume:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        if path.stat().st_size < 132:  # (not yet its preamble and "DICM")
            raise IncompleteVolume(f"'{path.name}' is incomplete ({path.stat().st_size} bytes)") from None
        raise VolumeError(f"'{path.name}' is not a DICOM file ({exc})") from None
    except (EOFError, OSError, ValueError, struct.error) as exc:
        raise IncompleteVolume(f"'{path.name}' is incomplete ({exc})") from None
    if "PixelData" not in ds:
        raise IncompleteVolume(f"'{path.name}' is incomplete (no pixel data)")
    try:
        wrapper = _dicom_wrapper(ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.asarray(wrapper.get_data(), np.float32)
            affine = LPS_TO_RAS @ wrapper.affine
    except ValueError as exc:
        if "less than expected" in str(exc):  # pydicom: pixel data cut short
            raise IncompleteVolume(f"'{path.name}' is incomplete ({exc})") from None
        raise VolumeError(f"'{path.name}' cannot be read as an MR image: {exc}") from None
    except Exception as exc:  # (nibabel's wrappers raise many kinds for headers that do not add up)
        raise VolumeError(f"'{path.name}' cannot be read as an MR image: {type(exc).__name__}: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.shape[2] == 1 and not getattr(wrapper, "is_mosaic", False):
        data = data[..., 0]  # (a single-frame file: one slice)
    if not np.isfinite(data).all():
        raise VolumeError(f"'{path.name}' has voxels that are not finite numbers")
    number = ds.get("AcquisitionNumber")
    if number in (None, ""):
        found = _NUMBER.search(path.name)
        number = int(found[1]) if found else None
    position = None
    if data.ndim == 2:
        position = float(np.dot(wrapper.slice_normal, np.asarray(wrapper.image_position, float)))
    elif data.ndim != 3:
        raise VolumeError(f"'{path.name}' is {data.ndim}-D ({'x'.join(map(str, data.shape))}); a volume is 3-D")
    return Volume(path, data, affine, None if number is None else int(number), _dicom_time(ds), position,
                  str(ds.get("SeriesInstanceUID", "")))  # fmt: skip


def _dicom_wrapper(ds):
    """nibabel's view of a DICOM dataset (its geometry): a Siemens mosaic (its image count from the CSA header,
    else the private tag (0019,100A)), an enhanced multi-frame image, or a single frame."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (nibabel calls its DICOM readers experimental: its geometry is used here)
        from nibabel.nicom import csareader, dicomwrappers

        if "MOSAIC" in [str(t).upper() for t in ds.get("ImageType", [])]:
            try:
                csa = csareader.get_csa_header(ds) or {}
                n = csareader.get_n_mosaic(csa) if csa else None
            except (csareader.CSAReadError, KeyError):
                csa, n = {}, None
            if not n and (0x0019, 0x100A) in ds:
                n = int(ds[0x0019, 0x100A].value)
            if not n:
                raise VolumeError("a Siemens mosaic without its number of images (CSA header or (0019,100A))")
            return dicomwrappers.MosaicWrapper(ds, csa, n_mosaic=n)
        return dicomwrappers.wrapper_from_data(ds)


def _dicom_time(ds) -> float | None:
    """A DICOM image's acquisition time (Unix seconds), or None if its headers do not say."""
    stamp = str(ds.get("AcquisitionDateTime", "") or "").strip()
    if not stamp and ds.get("AcquisitionDate") and ds.get("AcquisitionTime"):
        stamp = f"{ds.AcquisitionDate}{ds.AcquisitionTime}".strip()
    found = _DATETIME.match(stamp)
    if not found:
        return None
    digits, fraction, zone = found.groups()
    zone = zone or str(ds.get("TimezoneOffsetFromUTC", "") or "").strip()
    try:
        when = datetime.datetime.strptime(digits.ljust(14, "0"), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    if re.fullmatch(r"[+-]\d{4}", zone):
        offset = datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
        seconds = when.replace(tzinfo=datetime.timezone(offset if zone[0] == "+" else -offset)).timestamp()
    else:  # the scanner's local time
        seconds = time.mktime(when.timetuple())
    return seconds + float(f"0.{fraction}") if fraction else seconds


def stack_slices(slices: list[Volume]) -> Volume:
    """One volume from its single-frame slices (in any order); VolumeError if they are not evenly spaced."""
    ordered = sorted(slices, key=lambda s: s.position)
    first = ordered[0]
    positions = np.array([s.position for s in ordered])
    spacing = float(np.linalg.norm(first.affine[:3, 2]))
    if len(ordered) > 1 and not np.allclose(np.diff(positions), spacing, atol=0.01 * spacing + 1e-3):
        raise VolumeError(f"the slices of volume {first.number} ({first.path.name}...) are not {spacing:g} mm apart "
                          f"as their headers say (positions {np.round(positions, 2).tolist()})")  # fmt: skip
    times = [s.time for s in ordered if s.time is not None]
    return Volume(first.path, np.stack([s.data for s in ordered], axis=-1), first.affine, first.number,
                  min(times) if times else None, series=first.series)  # fmt: skip


def geometry(shape: tuple[int, ...], affine: np.ndarray) -> str:
    """A volume's geometry as a person reads it: voxels, their size and the affine's origin."""
    from nibabel.affines import voxel_sizes

    sizes = voxel_sizes(np.asarray(affine))
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


class Realigner:
    """Rigid realignment of each volume to a reference volume (the first one given, unless ``reference``), with
    SimpleITK: Euler 3-D transform, mean squares inside the reference's head, regular-step gradient descent over
    two resolutions, each volume started from the one before's transform."""

    def __init__(self, reference: Volume | None = None, iterations: int = 40, sampling: float = 0.1) -> None:
        self.iterations, self.sampling = iterations, sampling
        self.fixed = self.head = self.transform = None
        self.previous = np.zeros(6)
        if reference is not None:
            self._set_reference(reference)

    def _set_reference(self, volume: Volume) -> None:
        import SimpleITK as sitk

        self.fixed = sitk_image(volume.data, volume.affine)
        self.shape = volume.data.shape
        # the head: voxels brighter than a fifth of the bright voxels' mean (background and noise left out)
        bright = volume.data[volume.data > volume.data.mean()]
        head = (volume.data > 0.2 * (bright.mean() if bright.size else 0.0)).astype(np.uint8)
        self.head = sitk.GetImageFromArray(np.ascontiguousarray(head.T))
        self.head.CopyInformation(self.fixed)
        self.transform = rigid_transform(self.fixed, self.previous)

    def __call__(self, volume: Volume) -> tuple[np.ndarray, np.ndarray, float]:
        """(the volume realigned to the reference, its motion parameters (trans x, y, z in mm; rot x, y, z in
        radians, as :data:`MOTION`), its framewise displacement from the volume before (mm))."""
        import SimpleITK as sitk

        if self.fixed is None:
            self._set_reference(volume)
            return volume.data, np.zeros(6), 0.0
        if volume.data.shape != self.shape:
            raise VolumeError(f"'{volume.path.name}' has {volume.data.shape} voxels; the reference has {self.shape}")
        moving = sitk_image(volume.data, volume.affine)
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMeanSquares()
        method.SetMetricFixedMask(self.head)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(self.sampling, 1)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3,
                                                        numberOfIterations=self.iterations,
                                                        gradientMagnitudeTolerance=1e-8)  # fmt: skip
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([2, 1])
        method.SetSmoothingSigmasPerLevel([1.0, 0.0])
        method.SetInitialTransform(self.transform, inPlace=True)  # (from the volume before's)
        try:
            method.Execute(self.fixed, moving)
        except RuntimeError as exc:
            self._undo()
            why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise VolumeError(f"'{volume.path.name}' could not be realigned ({why})") from None
        angles, shifts = np.array(self.transform.GetParameters()[:3]), np.array(self.transform.GetParameters()[3:])
        params = np.concatenate([shifts, angles])
        # (a registration that lost the head, e.g. one whose samples all left the volume, returns without an error)
        if np.abs(shifts).max() > MAX_SHIFT or np.rad2deg(np.abs(angles)).max() > MAX_ROTATION:
            self._undo()
            shift, turn = np.abs(shifts).max(), np.rad2deg(np.abs(angles)).max()
            raise VolumeError(f"'{volume.path.name}' could not be realigned: the estimate ({shift:.1f} mm, {turn:.1f} "
                              f"degrees from the reference) is beyond what a head moves in the coil ({MAX_SHIFT:g} mm, "
                              f"{MAX_ROTATION:g} degrees)")  # fmt: skip
        realigned = sitk.Resample(moving, self.fixed, self.transform, sitk.sitkBSpline, 0.0)  # (as SPM: a spline)
        fd = framewise_displacement(self.previous, params)
        self.previous = params
        return sitk.GetArrayFromImage(realigned).T, params, fd

    def _undo(self) -> None:
        """Back to the volume before's transform (the next volume starts from it)."""
        self.transform = rigid_transform(self.fixed, self.previous)


def sitk_image(data: np.ndarray, affine: np.ndarray):
    """A volume as a SimpleITK image: index order x, y, z, spaced by the affine's voxel sizes (origin 0, axes as
    the voxels')."""
    import SimpleITK as sitk
    from nibabel.affines import voxel_sizes

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).T, np.float32))
    image.SetSpacing([float(v) for v in voxel_sizes(np.asarray(affine))])
    return image


def rigid_transform(image, params: np.ndarray):
    """The rigid transform of motion parameters ``params`` (as :data:`MOTION`), about ``image``'s centre."""
    import SimpleITK as sitk

    transform = sitk.Euler3DTransform()
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    transform.SetParameters([*map(float, params[3:]), *map(float, params[:3])])  # (SimpleITK: angles first)
    return transform


def framewise_displacement(before: np.ndarray, after: np.ndarray) -> float:
    """Power's framewise displacement (mm) between two volumes' motion parameters (as :data:`MOTION`)."""
    change = np.abs(np.asarray(after, float) - np.asarray(before, float))
    return float(change[:3].sum() + HEAD_RADIUS * change[3:].sum())


def new_volumes(folder: str | Path, poll: float = 0.05, patience: float = 5.0, existing: bool = False,
                slices: int | None = None) -> Iterator[Volume | VolumeError]:  # fmt: skip
    """Each volume that appears in ``folder`` (waited for, if it does not exist yet), read once complete, in the
    order of the files' names; a file that cannot be read ``patience`` s after it last grew comes as its
    VolumeError. Single-frame DICOM slices are stacked into their volume once its ``slices`` slices have come (a
    volume whose slices stop short comes as a VolumeError once a later one is whole). Files there before the call
    are skipped unless ``existing`` (a folder made after it is all new)."""
    folder = Path(folder)
    made_later = not folder.is_dir()  # (then every file in it is new, however soon after its making it is seen)
    while not folder.is_dir():
        time.sleep(poll)
    done: set[str] = set() if existing or made_later else {p.name for p in folder.iterdir()}
    sizes: dict[str, tuple[int, float]] = {}  # name -> (size at the last look, when it last changed)
    stacks: dict[tuple, list[Volume]] = {}  # (series, volume number) -> its slices so far
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
            if isinstance(volume, Volume) and volume.position is not None:  # one slice of a volume
                yield from _add_slice(stacks, volume, slices)
                continue
            yield volume
        time.sleep(poll)


def _add_slice(stacks: dict[tuple, list[Volume]], piece: Volume, slices: int | None) -> Iterator[Volume | VolumeError]:
    """Keep a single-frame slice with its volume's; yield the volume once whole (and any before it left short)."""
    if not slices:
        yield VolumeError(f"'{piece.path.name}' holds one slice (single-frame DICOM): the number of slices per "
                          "volume must be given")  # fmt: skip
        return
    key = (piece.series, piece.number)
    stacks.setdefault(key, []).append(piece)
    if len(stacks[key]) < slices:
        return
    for other in [k for k in stacks if k != key and (k[0] != key[0] or (k[1] or 0) < (key[1] or 0))]:
        got = stacks.pop(other)
        yield VolumeError(f"volume {other[1]} ({got[0].path.name}...): {len(got)} of its {slices} slices came: "
                          "skipped")  # fmt: skip
    try:
        yield stack_slices(stacks.pop(key))
    except VolumeError as exc:
        yield exc


def volume_lines(folder: str | Path, masks: RoiMasks, clock: Callable[[], float], latency: float = 0.0,
                 poll: float = 0.02, patience: float = 5.0, existing: bool = False,
                 realigner: Realigner | None = None, percent: bool = False) -> Iterator[str]:  # fmt: skip
    """Each new volume in ``folder`` as a relay line (``time value value ...``, a value per ROI, then with a
    ``realigner`` the volume's motion parameters and framewise displacement, as :data:`MOTION` and :data:`FD`): its
    acquisition time from its header, else its arrival on ``clock`` minus ``latency``. Each ROI's value is its
    mean, or with ``percent`` its percent signal change from its mean in the first volume. A file that is not a
    volume is logged and skipped (its volume is missing); a volume of another geometry than the masks raises
    RuntimeError, naming both."""
    baseline = None
    for volume in new_volumes(folder, poll, patience, existing, slices=masks.shape[2]):
        if isinstance(volume, VolumeError):
            log.error("%s: its volume is missing", volume)
            continue
        arrived = clock()
        try:
            masks.check(volume)
        except MaskError as exc:
            raise RuntimeError(str(exc)) from None
        data, extra = volume.data, []
        if realigner is not None:
            try:
                data, params, fd = realigner(volume)
            except VolumeError as exc:
                log.error("%s: its volume is missing", exc)
                continue
            extra = [*params.tolist(), fd]
        when = volume.time if volume.time is not None else arrived - latency
        values = masks.means(data)
        if percent:
            if baseline is None:
                baseline = np.array(values)
                if (np.abs(baseline) < 1e-6).any():
                    dark = [n for n, b in zip(masks.names, baseline, strict=True) if abs(b) < 1e-6]
                    raise RuntimeError(
                        f"ROI(s) {dark} are dark (mean 0) in the first volume '{volume.path.name}': "
                        "no percent signal change; check the masks, or send raw means (--units raw)"
                    )
            values = (100.0 * (np.array(values) / baseline - 1.0)).tolist()
        yield " ".join([repr(when), *map(repr, values), *map(repr, extra)]) + "\n"
