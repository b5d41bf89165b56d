"""A simulated scanner's real-time export: one volume per TR, written into a folder as a scanner's export writes
them (NIfTI, a Siemens DICOM mosaic, or single-frame DICOM slices), for ``neurotwin rig rtfmri``.

Each volume is a brain-like phantom (64 x 64 x 36 voxels of 3 mm) whose ROI voxels carry the simulated subject's
signal as percent signal change (:class:`~simulation.lsl_device.ScannerSignal`: every shown sentence's response
through the HRF, AR(1) noise and drift); the head moves (:class:`HeadMotion`, rigid, up to 2 mm and 2 degrees by
default when on), and thermal noise is added in every voxel. The participant sees what the presenter's LSL markers
say is shown. Each ROI's mask is written once, beside the volumes, in their space. A volume's acquisition time (on
the simulation's clock) is in its headers (NIfTI: ``descrip`` ``time=...``; DICOM: AcquisitionDateTime, UTC); each
file appears whole (written under a hidden name, then renamed).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import numpy as np

from hardware.lsl import clock_origin
from hardware.rtfmri import rigid_transform, sitk_image
from kit.clock import sim_clock

from .dicom import write_dicom
from .lsl_device import ScannerSignal
from .subjects import Subject

log = logging.getLogger(__name__)

SHAPE = (64, 64, 36)
VOXEL = 3.0  # mm
BASELINE = 1000.0  # the phantom's mean brain intensity
ROI_RADIUS = 3  # voxels


def affine() -> np.ndarray:
    """The phantom's voxel-to-scanner affine: 3-mm voxels, the volume centred on the origin."""
    a = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    a[:3, 3] = -VOXEL * (np.array(SHAPE) - 1) / 2
    return a


def phantom(seed: int = 0) -> np.ndarray:
    """A brain-like volume: an ellipsoid of tissue with smooth texture (structure a realignment can hold on to)."""
    from scipy.ndimage import gaussian_filter

    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.85) ** 2)
    brain = 1.0 / (1.0 + np.exp((r - 1.0) / 0.04))
    texture = gaussian_filter(np.random.default_rng([seed, 1]).normal(0, 1, SHAPE), 1.5)
    return (BASELINE * brain * (1.0 + 0.6 * texture / texture.std())).clip(0, None)


def roi_masks(rois: list[str]) -> dict[str, np.ndarray]:
    """A sphere of radius 3 voxels per ROI, placed apart inside the brain (the same for the same ROIs)."""
    centre = (np.array(SHAPE) - 1) / 2
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), -1)
    out = {}
    for i, roi in enumerate(rois):
        angle = 2 * np.pi * i / max(len(rois), 1) + 0.6
        where = centre + np.array([14 * np.cos(angle), 14 * np.sin(angle), 3 * ((i % 3) - 1)])
        out[roi] = np.linalg.norm(grid - where, axis=-1) <= ROI_RADIUS
    return out


def write_masks(rois: list[str], folder: str | Path) -> dict[str, Path]:
    """Each ROI's mask as ``folder/NAME.nii.gz`` (kept if there already); name -> file."""
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for roi, inside in roi_masks(rois).items():
        path = folder / f"{roi}.nii.gz"
        if not path.exists():
            tmp = folder / f".{roi}.nii.gz"
            nib.save(nib.Nifti1Image(inside.astype(np.uint8), affine()), tmp)
            os.replace(tmp, path)
        files[roi] = path
    return files


FORMATS = ("nifti", "mosaic", "slices")


class HeadMotion:
    """A head's rigid motion over volumes: a slow random walk with now and then a jerk, each of its parameters
    (trans x, y, z in mm; rot x, y, z in radians, as :data:`hardware.rtfmri.MOTION`) kept within the bounds; no
    motion at volume 0."""

    def __init__(self, max_shift: float = 2.0, max_rotation: float = 2.0, seed: int = 0) -> None:
        """``max_shift`` in mm, ``max_rotation`` in degrees."""
        self.bound = np.array([max_shift] * 3 + [np.deg2rad(max_rotation)] * 3)
        self.rng = np.random.default_rng([seed, 3])
        self.params = np.zeros(6)
        self.velocity = np.zeros(6)
        self.started = False

    def step(self) -> np.ndarray:
        """The next volume's parameters (the first volume's: none)."""
        if not self.bound.any() or not self.started:
            self.started = True
            return self.params.copy()
        self.velocity = 0.8 * self.velocity + self.rng.normal(0, 0.03, 6) * self.bound
        if self.rng.random() < 0.02:  # a jerk
            self.velocity += self.rng.normal(0, 0.25, 6) * self.bound
        out = self.params + self.velocity
        over = np.abs(out) > self.bound  # (bounce off the bounds)
        self.velocity[over] *= -1
        self.params = np.clip(out, -self.bound, self.bound)
        return self.params.copy()


def move(volume: np.ndarray, params: np.ndarray) -> np.ndarray:
    """``volume`` with the head moved by ``params`` (the transform a realignment to the unmoved head finds)."""
    import SimpleITK as sitk

    image = sitk_image(volume, affine())
    transform = rigid_transform(image, params)
    return sitk.GetArrayFromImage(sitk.Resample(image, image, transform.GetInverse(), sitk.sitkBSpline, 0.0)).T


class VolumeWriter:
    """The export: each sample of ROI values (percent signal change) as a volume file (or a file per slice) in
    ``folder``."""

    def __init__(self, folder: str | Path, rois: list[str], speed: float, seed: int = 0, thermal: float = 0.005,
                 keep: int = 100, lsl_clock=None, file_format: str = "nifti", motion: HeadMotion | None = None
                 ) -> None:  # fmt: skip
        """``thermal``: each voxel's noise SD as a fraction of the mean brain intensity; ``keep``: the folder keeps
        the last ``keep`` volumes (a long simulation would fill the disk; the rig reads each as it comes);
        ``file_format``: one of :data:`FORMATS`; ``motion``: the head's, if it moves."""
        if file_format not in FORMATS:
            raise ValueError(f"file format {file_format!r}: expected one of {', '.join(FORMATS)}")
        self.folder = Path(folder)
        self.keep = keep
        self.file_format = file_format
        self.motion = motion
        self.truth: list[tuple[int, float, np.ndarray, np.ndarray]] = []  # (volume, time, ROI values, motion)
        self.series = f"2.25.{int.from_bytes(np.random.default_rng([seed, 4]).bytes(12), 'big')}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.brain = phantom(seed)
        self.masks = roi_masks(rois)
        self.rois = rois
        self.rng = np.random.default_rng([seed, 2])
        self.thermal = thermal * BASELINE
        self.affine = affine()
        self.speed = speed
        # an LSL time t is origin + speed * t on the simulation's clock (which the rig and the controller share)
        self.origin = clock_origin(sim_clock(speed), lsl_clock, speed) if lsl_clock else 0.0

    def volume(self, values: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        """One volume: the phantom, each ROI's voxels scaled by its value in percent, the head moved by
        ``params`` (if any), thermal noise."""
        scale = np.ones(SHAPE)
        for roi, value in zip(self.rois, values, strict=True):
            scale[self.masks[roi]] += value / 100.0
        head = self.brain * scale
        if params is not None and np.any(params):
            head = move(head, params)
        return head + self.rng.normal(0, self.thermal, SHAPE)

    def push(self, first: int, values: np.ndarray, stamps: np.ndarray) -> list[float]:
        """Write volumes ``first ..`` (acquired at LSL times ``stamps``); when each file was complete (Unix s)."""
        done = []
        for k, (row, stamp) in enumerate(zip(values, stamps, strict=True), start=first):
            params = self.motion.step() if self.motion is not None else np.zeros(6)
            when = self.origin + self.speed * float(stamp)
            self.truth.append((k, when, np.asarray(row, float), params))
            data = np.clip(np.rint(self.volume(row, params)), 0, np.iinfo(np.int16).max).astype(np.int16)
            done.append(self.write(k, data, when))
        return done

    def write(self, k: int, data: np.ndarray, when: float) -> float:
        """Write volume ``k`` (int16 voxels, as scanners write them) acquired at ``when``; the time (Unix s) its
        last file was complete. The folder keeps the last ``keep`` volumes."""
        if self.file_format == "nifti":
            import nibabel as nib

            image = nib.Nifti1Image(data, self.affine)
            image.header["descrip"] = f"time={when:.6f}".encode()
            saves = {f"vol_{k:05d}.nii": image.to_filename}
        else:
            datasets = write_dicom(data, self.affine, k + 1, when, self.series, mosaic=self.file_format == "mosaic")
            saves = {f"vol_{k:05d}_{i:03d}.dcm": functools.partial(ds.save_as, enforce_file_format=True)
                     for i, ds in enumerate(datasets)}  # fmt: skip
        for name, save in saves.items():
            tmp = self.folder / f".{name}"
            save(tmp)
            os.replace(tmp, self.folder / name)  # (whole at once, as the rig sees it)
        complete = time.time()
        for old in self.folder.glob(f"vol_{k - self.keep:05d}*"):
            old.unlink(missing_ok=True)
        return complete


class SimulatedExportScanner(ScannerSignal):
    """A scanner writing its real-time export into ``folder`` at one volume per ``tr`` simulated seconds."""

    def __init__(self, subject: Subject, folder: str | Path, markers: str, *, tr: float = 2.0, speed: float = 1.0,
                 seed: int = 0, thermal: float = 0.005, file_format: str = "nifti", motion: HeadMotion | None = None,
                 **options) -> None:  # fmt: skip
        """``options``: :class:`ScannerSignal`'s (noise_sd, ar1, drift_sd, latency)."""
        super().__init__(subject, markers, tr=tr, speed=speed, seed=seed, **options)
        self.sink = VolumeWriter(folder, self.rois, speed, seed=seed, thermal=thermal, lsl_clock=self.lsl.local_clock,
                                 file_format=file_format, motion=motion)  # fmt: skip
