"""Real-time fMRI volumes from an export folder: read once complete (never misread), ROI means through masks in the
same space, and a clear error for a corrupt file or a mask of another geometry."""

import gzip
import threading
import time

import numpy as np
import pytest

from hardware.rtfmri import IncompleteVolume, MaskError, RoiMasks, Volume, VolumeError, new_volumes, read_volume

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
AFFINE[:3, 3] = (-96.0, -96.0, -54.0)


def _nifti(path, data, affine=AFFINE, time_=None):
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    if time_ is not None:
        image.header["descrip"] = f"time={time_:.6f}".encode()
    nib.save(image, path)
    return path


def _volume(seed, shape=(16, 16, 8)):
    return np.random.default_rng(seed).normal(1000, 10, shape)


def test_a_volume_is_read_with_its_number_and_acquisition_time(tmp_path):
    data = _volume(0)
    v = read_volume(_nifti(tmp_path / "vol_0007.nii.gz", data, time_=1765000000.25))
    assert v.number == 7 and v.time == pytest.approx(1765000000.25)
    np.testing.assert_allclose(v.data, data, rtol=1e-6)
    np.testing.assert_allclose(v.affine, AFFINE)
    assert read_volume(_nifti(tmp_path / "scan.nii", data)).time is None  # a header that does not say


@pytest.mark.parametrize("name", ["vol_0001.nii", "vol_0001.nii.gz"])
def test_a_file_cut_short_is_incomplete_and_garbage_is_not_a_volume(tmp_path, name):
    path = _nifti(tmp_path / name, _volume(1))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IncompleteVolume, match="is incomplete"):
        read_volume(path)
    path.write_bytes(b"not a volume at all" * 50 if name.endswith(".nii") else gzip.compress(b"junk" * 100))
    with pytest.raises(VolumeError) as err:
        read_volume(path)
    assert not isinstance(err.value, IncompleteVolume) and name in str(err.value)


def test_roi_means_and_a_volume_of_another_geometry_named(tmp_path):
    inside = np.zeros((16, 16, 8))
    inside[4:8, 4:8, 2:4] = 1
    other = np.zeros((16, 16, 8))
    other[10:14, 10:14, 4:6] = 1
    masks = RoiMasks({"lang": _nifti(tmp_path / "lang.nii.gz", inside), "md": _nifti(tmp_path / "md.nii", other)})
    data = _volume(2)
    v = read_volume(_nifti(tmp_path / "vol_0001.nii", data))
    masks.check(v)
    assert masks.means(v.data) == pytest.approx([data[inside > 0].mean(), data[other > 0].mean()], rel=1e-6)
    wrong = read_volume(_nifti(tmp_path / "vol_0002.nii", _volume(3, (20, 16, 8))))
    with pytest.raises(MaskError) as err:
        masks.check(wrong)
    message = str(err.value)
    assert "'vol_0002.nii' (20x16x8 voxels of 3x3x3 mm" in message and "ROI mask 'lang'" in message
    assert "16x16x8 voxels of 3x3x3 mm" in message
    shifted = AFFINE.copy()
    shifted[0, 3] += 6.0
    with pytest.raises(MaskError, match="are not in the same space"):
        RoiMasks({"lang": tmp_path / "lang.nii.gz", "md": _nifti(tmp_path / "md2.nii", other, shifted)})
    with pytest.raises(MaskError, match=r"ROI mask 'md' .* is empty"):
        RoiMasks({"lang": tmp_path / "lang.nii.gz", "md": _nifti(tmp_path / "md3.nii", np.zeros((16, 16, 8)))})


def test_the_folder_watch_yields_each_volume_whole_and_in_order(tmp_path):
    """Volumes written while the watch runs: one written in two halves 0.3 s apart comes once, whole; a corrupt
    one comes as its error; the files already there are skipped; the order is the files' names'."""
    folder = tmp_path / "export"
    folder.mkdir()
    _nifti(folder / "vol_0000.nii", _volume(9))  # there before the watch: not a new volume
    datas = {k: _volume(10 + k) for k in (1, 2, 4)}
    got: list = []
    watch = new_volumes(folder, poll=0.02, patience=0.5)

    def consume() -> None:
        for item in watch:
            got.append(item)
            if len(got) == 4:
                return

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    time.sleep(0.1)
    _nifti(folder / "vol_0001.nii", datas[1])
    whole = _nifti(tmp_path / "staging.nii", datas[2]).read_bytes()
    with open(folder / "vol_0002.nii", "wb") as fh:  # written in two halves
        fh.write(whole[: len(whole) // 2])
        fh.flush()
        time.sleep(0.3)
        fh.write(whole[len(whole) // 2 :])
    (folder / "vol_0003.nii").write_bytes(b"\x00" * 100)  # corrupt
    _nifti(folder / "vol_0004.nii", datas[4])
    reader.join(20)
    assert [g.path.name if not isinstance(g, Exception) else "error" for g in got] == [
        "vol_0001.nii", "vol_0002.nii", "error", "vol_0004.nii"]  # fmt: skip
    for g in (got[0], got[1], got[3]):
        np.testing.assert_allclose(g.data, datas[g.number], rtol=1e-6)
    assert "vol_0003.nii" in str(got[2])


def test_the_rtfmri_rig_serves_volumes_and_names_what_it_cannot_use(tmp_path):
    """`neurotwin rig rtfmri`: each new volume is a sample of the run at its header's acquisition time, its value
    each ROI's mean; a corrupt file is named and its volume left missing; a volume of another geometry than the
    masks stops the rig with a message naming both."""
    import subprocess
    import sys

    from hardware import PeerClient

    from ..support.netutil import ROOT, free_port, wait_up

    inside = np.zeros((16, 16, 8))
    inside[4:8, 4:8, 2:4] = 1
    mask = _nifti(tmp_path / "lang.nii.gz", inside)
    folder = tmp_path / "export"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "control_loop.cli", "rig", "rtfmri", "--watch", str(folder),
                             "--mask", f"lang={mask}", "--patience", "0.3", "--units", "raw", "--bind", f"tcp://127.0.0.1:{port}",
                             "--heartbeat", "0.3"], cwd=ROOT, stderr=subprocess.PIPE, text=True)  # fmt: skip
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.3)
    got: list[dict] = []
    written = {}
    try:
        wait_up(client, 30, "the rtfmri rig")
        assert client.peer_channels == ["lang"]
        client.send_reliable("start", run=1, tr=0.2, n_volumes=8)
        time.sleep(1.0)  # (the rig has the start before the first volume, on a busy machine too)
        folder.mkdir(exist_ok=True)
        start = time.time()
        for k in range(8):
            acquired = start + 0.2 * k  # (each volume's header: its time on the scanner's schedule)
            time.sleep(max(0.0, acquired - time.time()))
            if k == 4:
                (folder / f"vol_{k:04d}.nii").write_bytes(b"\x00" * 400)  # corrupt
            else:
                data = _volume(20 + k)
                written[k] = (acquired, data[inside > 0].mean())
                _nifti(folder / f"vol_{k:04d}.nii", data, time_=acquired)
        end = time.monotonic() + 10
        while sum(m["type"] == "sample" for m in got) < 7 and time.monotonic() < end:
            got += client.poll(0.05)
        samples = [m for m in got if m["type"] == "sample"]
        assert [m["volume"] for m in samples] == [0, 1, 2, 3, 5, 6, 7]  # volume 4 never came: missing
        for m in samples:
            acquired, mean = written[m["volume"]]
            assert m["time"] == pytest.approx(acquired, abs=1e-5) and m["values"][0] == pytest.approx(mean, rel=1e-5)
        _nifti(folder / "vol_0008.nii", _volume(30, (20, 16, 8)), time_=time.time())  # another geometry
        _, err = proc.communicate(timeout=30)
    finally:
        client.close()
        proc.kill()
    assert proc.returncode != 0
    assert "'vol_0004.nii' is not a NIfTI volume" in err and "its volume is missing" in err, err[-2000:]
    assert "the volume 'vol_0008.nii' (20x16x8 voxels of 3x3x3 mm" in err and "ROI mask 'lang'" in err, err[-2000:]


# ----- DICOM (Siemens mosaic, single-frame slices), realignment -----


def _export(folder, file_format, rows, motion=None, start=1765000000.0, tr=2.0, thermal=0.005):
    """Volumes written by the simulated export (ROI values ``rows`` in percent); its writer (with its truth)."""
    from simulation.export_scanner import VolumeWriter

    writer = VolumeWriter(folder, ["lang", "md"], 1.0, file_format=file_format, motion=motion, thermal=thermal)
    writer.push(0, np.asarray(rows, float), start + tr * np.arange(len(rows)))
    return writer


def _watch(folder, n, slices=36):
    watch = new_volumes(folder, poll=0.01, patience=0.5, existing=True, slices=slices)
    return [next(watch) for _ in range(n)]


def test_dicom_mosaics_and_slices_read_as_the_same_volume_as_nifti(tmp_path):
    """The same volumes written as NIfTI, as Siemens mosaics and as single-frame slices read back with the same
    voxels, geometry, number and acquisition time from the DICOM headers (to the microsecond)."""
    from simulation.export_scanner import write_masks

    masks = RoiMasks(write_masks(["lang", "md"], tmp_path / "masks"))
    rows = [[1.0, 0.5], [0.2, -0.3]]
    got = {}
    for file_format in ("nifti", "mosaic", "slices"):
        _export(tmp_path / file_format, file_format, rows, start=1765000000.123456)
        got[file_format] = _watch(tmp_path / file_format, 2)
    assert len(list((tmp_path / "slices").iterdir())) == 2 * 36  # (a file per slice)
    for file_format in ("mosaic", "slices"):
        for k, (v, ref) in enumerate(zip(got[file_format], got["nifti"], strict=True)):
            masks.check(v)
            assert v.number == k + 1  # AcquisitionNumber
            assert v.time == pytest.approx(1765000000.123456 + 2.0 * k, abs=1e-6)
            np.testing.assert_array_equal(v.data, ref.data)
            np.testing.assert_allclose(v.affine, ref.affine, atol=1e-5)


def test_a_corrupt_or_cut_dicom_is_named_and_its_slices_must_all_come(tmp_path):
    """A DICOM cut short is incomplete (tried again, never misread), one that is not DICOM is named; a volume of
    single-frame slices missing one comes as an error naming it once the next volume is whole."""
    _export(tmp_path / "m", "mosaic", [[0.0, 0.0]])
    path = next((tmp_path / "m").glob("*.dcm"))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IncompleteVolume, match="is incomplete"):
        read_volume(path)
    path.write_bytes(whole[:500])  # (its header, no pixel data yet)
    with pytest.raises(IncompleteVolume, match="no pixel data"):
        read_volume(path)
    path.write_bytes(b"\x00" * 1000)
    with pytest.raises(VolumeError, match="is not a DICOM file") as err:
        read_volume(path)
    assert not isinstance(err.value, IncompleteVolume) and path.name in str(err.value)
    _export(tmp_path / "s", "slices", [[0.0, 0.0], [0.1, 0.0], [0.2, 0.0]])
    (tmp_path / "s" / "vol_00001_017.dcm").unlink()  # volume 2 never gets its 18th slice
    got = _watch(tmp_path / "s", 3)
    assert isinstance(got[0], Volume) and isinstance(got[2], Volume) and (got[0].number, got[2].number) == (1, 3)
    assert isinstance(got[1], VolumeError) and "volume 2" in str(got[1]) and "35 of its 36 slices" in str(got[1])


def test_realignment_recovers_the_motion_and_the_roi_signal(tmp_path):
    """Head motion up to 2 mm and 2 degrees: the realigned ROI time course follows the noise-free signal (r >= 0.95,
    where without realignment it does not), and the estimated motion parameters track the simulated ones."""
    from hardware.rtfmri import Realigner, framewise_displacement
    from simulation.export_scanner import HeadMotion, write_masks

    n = 30
    signal = 0.8 * np.sin(np.arange(n) / 3.0)
    writer = _export(tmp_path / "m", "mosaic", np.c_[signal, np.zeros(n)], motion=HeadMotion(2.0, 2.0, seed=3))
    masks = RoiMasks(write_masks(["lang", "md"], tmp_path / "masks"))
    realign = Realigner()
    raw, realigned, estimated, fds = [], [], [], []
    for volume in _watch(tmp_path / "m", n):
        data, params, fd = realign(volume)
        raw.append(masks.means(volume.data)[0])
        realigned.append(masks.means(data)[0])
        estimated.append(params)
        fds.append(fd)
    truth = np.array([t[3] for t in writer.truth])
    assert np.abs(truth[:, :3]).max() > 1.0 and np.rad2deg(np.abs(truth[:, 3:]).max()) > 1.0  # (it moved)
    assert np.corrcoef(realigned, signal)[0, 1] >= 0.95 > np.corrcoef(raw, signal)[0, 1]
    error = np.array(estimated) - truth
    assert np.sqrt((error[:, :3] ** 2).mean()) < 0.1 and np.rad2deg(np.sqrt((error[:, 3:] ** 2).mean())) < 0.1
    assert fds[0] == 0.0 and fds[5] == pytest.approx(framewise_displacement(estimated[4], estimated[5]))


def test_the_rig_realigns_dicom_mosaics_and_sends_motion_with_each_sample(tmp_path):
    """`rig rtfmri --realign` on Siemens mosaics of a moving head: each sample is the ROIs' percent signal change
    with the volume's motion parameters and framewise displacement (announced in hello); a corrupt DICOM is named
    and, like a volume that never came, left missing. (A mask given as a file alone is named after it.)"""
    import subprocess
    import sys

    from hardware import PeerClient
    from hardware.rtfmri import FD, MOTION
    from simulation.export_scanner import HeadMotion, VolumeWriter, write_masks

    from ..support.netutil import ROOT, free_port, wait_up

    masks = write_masks(["lang", "md"], tmp_path / "masks")
    folder = tmp_path / "export"
    writer = VolumeWriter(folder, ["lang", "md"], 1.0, file_format="mosaic", motion=HeadMotion(2.0, 2.0, seed=1))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "control_loop.cli", "rig", "rtfmri", "--watch", str(folder),
                             "--mask", f"lang={masks['lang']}", "--mask", str(masks["md"]), "--realign",
                             "--patience", "0.3", "--bind", f"tcp://127.0.0.1:{port}", "--heartbeat", "0.3"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)  # fmt: skip
    client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.3)
    signal = [0.0, 1.0, 0.5, 0.0, 2.0, 0.0, 1.5, 0.0]
    got: list[dict] = []
    try:
        wait_up(client, 30, "the rtfmri rig")
        assert client.peer_channels == ["lang", "md"] and client.peer_confounds == [*MOTION, FD]
        client.send_reliable("start", run=1, tr=0.4, n_volumes=8)
        time.sleep(1.0)  # (the rig has the start before the first volume, on a busy machine too)
        start = time.time()
        for k in range(8):
            time.sleep(max(0.0, start + 0.4 * k - time.time()))
            if k == 5:  # never written (and its motion step skipped): missing
                continue
            writer.push(k, np.array([[signal[k], 0.0]]), np.array([start + 0.4 * k]))
            if k == 3:  # corrupt: missing
                next(folder.glob("vol_00003_*.dcm")).write_bytes(b"\x00" * 2000)
        end = time.monotonic() + 20
        while sum(m["type"] == "sample" for m in got) < 6 and time.monotonic() < end:
            got += client.poll(0.05)
    finally:
        client.close()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    samples = [m for m in got if m["type"] == "sample"]
    assert [m["volume"] for m in samples] == [0, 1, 2, 4, 6, 7]
    truth = {k: (when, motion) for k, when, _values, motion in writer.truth}
    for m in samples:
        when, motion = truth[m["volume"]]
        assert m["time"] == pytest.approx(when, abs=1e-5)
        # (percent signal change; interpolating a moved head's texture leaves a few tenths of a percent)
        assert m["values"][0] == pytest.approx(signal[m["volume"]], abs=0.8) and abs(m["values"][1]) < 0.8
        assert len(m["confounds"]) == 7
        np.testing.assert_allclose(m["confounds"][:3], motion[:3], atol=0.05)  # mm
        np.testing.assert_allclose(m["confounds"][3:6], motion[3:], atol=np.deg2rad(0.1))
    sent = [m["values"][0] for m in samples]
    assert np.corrcoef(sent, [signal[m["volume"]] for m in samples])[0, 1] > 0.9
    assert "'vol_00003_000.dcm' is not a DICOM file" in err and "its volume is missing" in err, err[-2000:]
    assert "volume(s) 5-5 never came" in err, err[-2000:]


def test_a_volume_that_cannot_be_realigned_is_named_and_the_next_one_realigns(tmp_path):
    """A registration that fails (here: started from an estimate 500 mm away, every sample outside the volume)
    names its volume (the rig leaves it missing), and the realigner goes on from the transform before it."""
    from hardware.rtfmri import Realigner

    writer = _export(tmp_path / "m", "nifti", [[0.0, 0.0], [0.5, 0.0]], motion=_motion())
    reference, moved = _watch(tmp_path / "m", 2)
    realign = Realigner(reference)
    realign.transform.SetParameters((0.0, 0.0, 0.0, 500.0, 0.0, 0.0))  # (a runaway estimate)
    with pytest.raises(VolumeError, match=r"'vol_00001.nii' could not be realigned: the estimate \(500.0 mm"):
        realign(moved)
    _data, params, _fd = realign(moved)
    np.testing.assert_allclose(params, writer.truth[1][3], atol=0.05)


def _motion():
    from simulation.export_scanner import HeadMotion

    return HeadMotion(2.0, 2.0, seed=4)
