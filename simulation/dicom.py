"""DICOM files as a scanner's real-time export writes them: a Siemens mosaic (one file per volume) or single-frame
slices (one file per slice), MR image storage, 16-bit, with the geometry (orientation, position, spacing), volume
number (AcquisitionNumber) and acquisition time (AcquisitionDateTime, UTC) a reader needs."""

from __future__ import annotations

import datetime

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SIEMENS_MOSAIC_COUNT = (0x0019, 0x100A)  # Siemens' private NumberOfImagesInMosaic


def _dataset(series: str, number: int, when: float, image_type: list[str]):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
    ds.Modality, ds.Manufacturer = "MR", "SIEMENS"
    ds.ImageType = image_type
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{series}.1", series
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = number
    t = datetime.datetime.fromtimestamp(when, datetime.UTC)
    ds.AcquisitionDateTime = t.strftime("%Y%m%d%H%M%S.%f")
    ds.AcquisitionDate, ds.AcquisitionTime = t.strftime("%Y%m%d"), t.strftime("%H%M%S.%f")
    ds.TimezoneOffsetFromUTC = "+0000"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def _geometry(ds, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orientation and spacing of images whose pixel [r, c] is voxel [r, c, k] of a volume with ``affine`` (RAS);
    the affine in LPS and the voxel sizes."""
    lps = RAS_TO_LPS @ affine
    sizes = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    along_rows, along_columns = lps[:3, 0] / sizes[0], lps[:3, 1] / sizes[1]
    # DICOM: the direction of increasing column index first, then of increasing row index
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*along_columns, *along_rows)]
    ds.PixelSpacing = [f"{sizes[0]:.6f}", f"{sizes[1]:.6f}"]
    ds.SliceThickness = ds.SpacingBetweenSlices = f"{sizes[2]:.6f}"
    return lps, sizes


def write_dicom(data: np.ndarray, affine: np.ndarray, number: int, when: float, series: str, mosaic: bool = True):
    """A volume (x, y, z int16 voxels, voxel-to-RAS ``affine``) as DICOM datasets: one Siemens mosaic, or a
    single-frame dataset per slice; ``number`` its AcquisitionNumber, ``when`` its acquisition (Unix s)."""
    data = np.asarray(data, np.int16)
    nx, ny, nz = data.shape
    if not mosaic:
        out = []
        for k in range(nz):
            ds = _dataset(series, number, when, ["ORIGINAL", "PRIMARY", "M", "ND"])
            lps, _ = _geometry(ds, affine)
            ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * lps[:3, 2]]
            ds.InstanceNumber = k + 1
            ds.Rows, ds.Columns = nx, ny
            ds.PixelData = np.ascontiguousarray(data[:, :, k]).tobytes()
            out.append(ds)
        return out
    ds = _dataset(series, number, when, ["ORIGINAL", "PRIMARY", "M", "MOSAIC"])
    side = int(np.ceil(np.sqrt(nz)))
    tiles = np.zeros((side * nx, side * ny), np.int16)
    for k in range(nz):
        i, j = divmod(k, side)
        tiles[i * nx : (i + 1) * nx, j * ny : (j + 1) * ny] = data[:, :, k]
    lps, sizes = _geometry(ds, affine)
    # Siemens puts a mosaic's position at the corner of the whole tiled image, not of its first slice
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient]).reshape(2, 3).T
    corner = (np.array(tiles.shape) - (nx, ny)) / 2
    ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] - (np.fliplr(orientation) * sizes[:2]) @ corner]
    ds.InstanceNumber = number
    ds.Rows, ds.Columns = tiles.shape
    ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new(SIEMENS_MOSAIC_COUNT, "US", nz)
    ds.PixelData = tiles.tobytes()
    return [ds]
