"""Images: visual features, the image twin, synthesis within the safety limits, and the presenter's refusal."""

import csv
import io
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from hardware import PeerClient
from simulation.tuning import gabor_tuning
from stimulus_synthesis import Goal
from stimulus_synthesis.images import (
    FourierImage,
    best_starts,
    control_images,
    evolve_images,
    natural_images,
    synthesize_images,
    twin_predictor,
)
from stimulus_synthesis.safety import SafetyLimits, check_image, check_sequence, make_safe
from twin import DataError, FeatureModelError, Twin
from twin.vision import ImageFeatures, ImagePlan, image_digests, to_tensor

from ..support.netutil import ROOT, free_port, wait_up
from ..twin.test_cli_twin import neurotwin

YY, XX = np.mgrid[0:256, 0:256]


def _grey(a) -> np.ndarray:
    return np.repeat(np.asarray(a, np.uint8)[..., None], 3, 2)


GRATING = _grey((np.sin(2 * np.pi * XX / 16) > 0) * 255)
CHECKERBOARD = _grey(((YY // 16 + XX // 16) % 2) * 255)
RED = np.zeros((256, 256, 3), np.uint8)
RED[..., 0] = 255
BLACK = np.zeros((256, 256, 3), np.uint8)


def _png(a) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def natural():
    return natural_images(240, 96, seed=1)


@pytest.fixture(scope="module")
def v1_twin(natural):
    """A Gabor-bank twin fit on 160 natural images' Poisson responses of other (random) Gabor sites."""
    truth = gabor_tuning(4, seed=3)
    rates = truth(natural)
    counts = np.random.default_rng(0).poisson(rates[:160] * 0.5) / 0.5
    twin = Twin.fit(natural[:160], counts, list(truth.rois), plan=ImagePlan(model="gabor-v1"))
    return twin, truth, rates


def test_known_unsafe_images_are_refused_with_a_reason():
    for image, words in [(GRATING, "regular high-contrast pattern"), (CHECKERBOARD, "regular high-contrast pattern"),
                         (RED, "saturated red")]:  # fmt: skip
        report = check_image(image)
        assert not report.ok and words in str(report), (words, report)
    flash = check_sequence([(0.0, RED), (0.1, BLACK), (0.2, RED), (0.3, BLACK)])
    assert not flash.ok and "saturated red flash" in str(flash)
    white = np.full((64, 64, 3), 255, np.uint8)
    strobe = check_sequence([(i * 0.1, white if i % 2 else BLACK) for i in range(10)])
    assert not strobe.ok and "flashes within one second" in str(strobe)
    # The same patterns small (a patch under a quarter of the field) or faint are allowed.
    patch = np.full((256, 256, 3), 128, np.uint8)
    patch[96:160, 96:160] = GRATING[96:160, 96:160]
    assert check_image(patch).ok
    faint = _grey(128 + 6 * np.sin(2 * np.pi * XX / 16))
    assert check_image(faint).ok
    # One flash (grey -> white -> grey) per second is within the guideline.
    grey = np.full((64, 64, 3), 128, np.uint8)
    assert check_sequence([(0.0, grey), (0.2, white), (0.7, grey)]).ok


def test_make_safe_scales_contrast_into_the_limits():
    safe, scale = make_safe(GRATING)
    assert 0 < scale < 1 and check_image(safe).ok
    assert make_safe(safe)[1] == 1.0  # already safe: unchanged
    with pytest.raises(ValueError, match="max_area"):
        SafetyLimits(max_area=0)


def test_natural_image_set_is_safe_and_varied(natural):
    assert len(natural) == 240 and natural[0].shape == (96, 96, 3)
    assert all(check_image(im).ok for im in natural[:40])
    assert np.std([im.mean() for im in natural]) > 5


def test_image_twin_predicts_held_out_sites_and_survives_save_load(v1_twin, natural, tmp_path):
    twin, _, rates = v1_twin
    pred, sd = twin.predict(natural[160:], with_sd=True)
    assert sd.shape == pred.shape and (sd > 0).all()
    r = [np.corrcoef(pred[:, j], rates[160:, j])[0, 1] for j in range(rates.shape[1])]
    assert min(r) > 0.25 and np.mean(r) > 0.35, r  # 160 noisy trials, phase-specific sites: well above chance
    twin.save(tmp_path / "t.h5")
    back = Twin.load(tmp_path / "t.h5")
    assert back.modality == "image" and back.plan == twin.plan
    np.testing.assert_allclose(back.predict(natural[160:170])[0], pred[:10], rtol=1e-6)
    back.update(natural[200:210], rates[200:210])  # online refinement as for text
    assert back.n_train == 170 and back.training_digests.shape == (170, 16)


def test_image_twin_starts_from_a_reference_twin(v1_twin, natural, tmp_path):
    """An image twin fit on 40 new noisy trials with v1_twin as its reference predicts held-out sites better than
    the 40 trials alone; it is still differentiable (synthesis raises its prediction), updates and saves."""
    reference, _, rates = v1_twin
    counts = np.random.default_rng(1).poisson(rates[160:200] * 0.5) / 0.5
    plan, rois = ImagePlan(model="gabor-v1"), reference.targets
    with_ref = Twin.fit(natural[160:200], counts, rois, plan=plan, reference=reference)
    alone = Twin.fit(natural[160:200], counts, rois, plan=plan)

    def held_out_r(twin: Twin) -> float:
        pred = twin.predict(natural[200:])[0]
        return float(np.mean([np.corrcoef(pred[:, j], rates[200:, j])[0, 1] for j in range(rates.shape[1])]))

    print(f"held-out mean r: with the reference {held_out_r(with_ref):.3f}, alone {held_out_r(alone):.3f}, "
          f"the reference {held_out_r(reference):.3f}")  # fmt: skip
    assert held_out_r(with_ref) > held_out_r(alone) + 0.05
    grad = synthesize_images(twin_predictor(with_ref), Goal("drive", roi=0), n=1, steps=16, size=96, seed=0)
    assert grad[0].trace[-1] > grad[0].trace[0]
    with_ref.update(natural[200:210], rates[200:210])
    with_ref.save(tmp_path / "t.h5")
    back = Twin.load(tmp_path / "t.h5")
    assert back.reference is not None and back.n_train == 50
    np.testing.assert_allclose(back.predict(natural[:5])[0], with_ref.predict(natural[:5])[0], rtol=1e-9)


def test_gradient_and_cmaes_synthesis_drive_a_site_inside_the_limits(v1_twin, natural):
    twin, truth, rates = v1_twin
    predict = twin_predictor(twin)
    grad = synthesize_images(predict, Goal("drive", roi=0), n=2, steps=48, size=96, seed=0)
    cma = evolve_images(predict, Goal("drive", roi=0), n=1, evaluations=40, size=96, seed=0)
    for item in grad + cma:
        assert item.safety.ok and check_image(item.image).ok, item.safety
        assert item.image.dtype == np.uint8 and item.image.shape == (96, 96, 3)
    assert grad[0].trace[-1] > grad[0].trace[0]  # the objective rose
    true = truth([g.image for g in grad])[:, 0]
    assert true.mean() > np.median(rates[:, 0]), (true, np.median(rates[:, 0]))
    assert cma[0].trace[-1] >= cma[0].trace[0]
    sup = synthesize_images(predict, Goal("suppress", roi=0), n=1, steps=48, size=96, seed=0)
    assert sup[0].predicted[0] < grad[0].predicted[0]


def test_thompson_rounds_synthesize_under_a_posterior_draw_of_the_image_twin(v1_twin, natural):
    """An image twin's posterior draw is a differentiable twin of its own: the same for the same seed,
    different between seeds, and its predictions spread about the twin's by the SD of the twin's mean."""
    twin, _, _ = v1_twin
    x = torch.from_numpy(np.stack(natural[160:200])).permute(0, 3, 1, 2).float() / 255.0
    mean = twin_predictor(twin)(x).numpy()
    draws = np.stack([twin_predictor(twin.sample(np.random.default_rng(i)))(x).numpy() for i in range(32)])
    assert np.array_equal(draws[3], twin_predictor(twin.sample(np.random.default_rng(3)))(x).numpy())
    assert draws.std(0).min() > 0
    _, sd_mean = twin.predict(natural[160:200], with_sd=True, noise=False)
    assert np.median(draws.std(0) / sd_mean) < 1.2  # blocks drawn on their own: at most the stated SD
    assert np.abs(draws.mean(0) - mean).max() < 4 * sd_mean.max()
    image = synthesize_images(twin_predictor(twin.sample(np.random.default_rng(0))), Goal("drive", roi=0), n=1,
                              steps=16, size=96, seed=0)[0]  # fmt: skip
    assert image.safety.ok


def test_synthesis_can_start_from_the_natural_images_the_twin_rates_best(v1_twin, natural):
    twin, truth, _ = v1_twin
    predict = twin_predictor(twin)
    goal = Goal("drive", roi=0)
    start = best_starts(predict, goal, natural[:80], 2, size=96)
    rated = twin.predict([to_tensor([im], 96)[0].permute(1, 2, 0).numpy() for im in natural[:80]])[0][:, 0]
    np.testing.assert_allclose(twin.predict(list(start))[0][:, 0], np.sort(rated)[-2:][::-1], rtol=0.02, atol=0.05)
    known = twin.predict(natural[:80])[0]  # predictions already at hand: the same starts, no second pass
    np.testing.assert_array_equal(best_starts(predict, goal, natural[:80], 2, size=96, predicted=known), start)
    with pytest.raises(ValueError, match="79 predictions given for 80 images"):
        best_starts(predict, goal, natural[:80], 2, size=96, predicted=known[:79])
    param = FourierImage(2, 96)  # the parametrization reproduces its starting images
    param.start_from(torch.from_numpy(start).permute(0, 3, 1, 2).float() / 255)
    with torch.no_grad():
        back = param().permute(0, 2, 3, 1).numpy() * 255
    assert np.abs(back - start.clip(5, 250)).max() < 1.0
    out = synthesize_images(predict, goal, n=2, steps=32, size=96, seed=0, start=start)
    assert all(o.safety.ok for o in out) and out[0].trace[-1] > out[0].trace[0]
    assert truth([o.image for o in out])[:, 0].mean() > truth(list(start))[:, 0].mean()
    with pytest.raises(ValueError, match="start must be 2 images of 96 x 96 x 3"):
        synthesize_images(predict, goal, n=2, steps=1, size=96, start=start[:1])
    with pytest.raises(ValueError, match="3 start images asked for, only 2 given"):
        best_starts(predict, goal, natural[:2], 3)


def test_one_site_control_lets_the_twin_choose_the_hold(v1_twin, natural):
    twin, truth, _ = v1_twin
    predict = twin_predictor(twin)
    images = natural[:80]
    rated = twin.predict(images)[0]
    out = control_images(predict, 3, images, n=1, holds=(0.0, 1.0, 4.0), predicted=rated, steps=24, size=96)
    assert set(out.tried) == {0.0, 1.0, 4.0} and out.images is out.tried[out.hold]
    ref, sd = rated.mean(0), rated.std(0)
    best = rated[:, 3].max()

    def judged(hold):  # (others within 1 SD, target 1.3x the best natural rating), from the twin alone
        p = np.mean([o.predicted for o in out.tried[hold]], 0)
        return abs(np.delete((p - ref) / sd, 3).mean()) < 1, p[3] >= 1.3 * best, p[3]

    rank = {h: judged(h) for h in out.tried}
    held = [h for h, (ok, _, _) in rank.items() if ok]
    strong = [h for h in held if rank[h][1]]
    if strong:
        assert out.hold == max(strong)
    elif held:
        assert out.hold == max(held, key=lambda h: rank[h][2])
    for items in out.tried.values():
        assert all(o.safety.ok for o in items)
    chosen = truth([o.image for o in out.images])[0]
    assert chosen[3] > truth(images)[:, 3].max()  # the target site rose above its natural maximum
    with pytest.raises(ValueError, match="rating per natural image"):
        control_images(predict, 3, images, predicted=rated[:10], steps=1, size=96)
    with pytest.raises(ValueError, match="non-negative"):
        control_images(predict, 3, images, holds=(-1.0,), predicted=rated, steps=1, size=96)


def test_image_bad_input_is_named():
    feats = ImageFeatures(ImagePlan(model="gabor-v1"))
    with pytest.raises(DataError, match="not an image file"):
        feats([ROOT / "README.md"])
    with pytest.raises(DataError, match="does not exist"):
        feats(["/nonexistent/x.png"])
    with pytest.raises(DataError, match="shape"):
        feats([np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(DataError, match="dtype int32"):
        feats([np.zeros((32, 32, 3), np.int32)])
    with pytest.raises(FeatureModelError, match="NaN"):
        ImageFeatures(ImagePlan(model="tests.support.subjects:nan_image_model"))([np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(FeatureModelError, match="no layer"):
        ImageFeatures(ImagePlan(model="gabor-v1", layers=("nope",)))
    with pytest.raises(FeatureModelError, match="unknown image model"):
        ImageFeatures(ImagePlan(model="resnet-9000"))


def test_cli_fits_an_image_twin_and_writes_safe_pngs(tmp_path, natural, v1_twin):
    _, truth, rates = v1_twin
    folder = tmp_path / "imgs"
    folder.mkdir()
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *truth.rois])
        for i in range(60):
            Image.fromarray(natural[i]).save(folder / f"{i}.png")
            w.writerow([f"imgs/{i}.png", *rates[i]])
    twin = tmp_path / "v1.h5"
    fit = neurotwin("twin", "fit", tmp_path / "train.csv", "--modality", "image", "--model", "gabor-v1", "--out", twin)
    assert "fit 60 unique images on gabor-v1" in fit.stdout and twin.exists()
    # the images it was fit on are known by their pixels (not by their paths), wherever they are scored from
    np.testing.assert_array_equal(Twin.load(twin).training_digests, image_digests(natural[:60]))
    out = tmp_path / "drive.csv"
    neurotwin("synthesize", "--modality", "image", "--twin", twin, "--out", out, "--n", "2", "--steps", "24",
              "--size", "96", "--roi", "site1")  # fmt: skip
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 2 and all(r["safe"] == "True" for r in rows)
    for row in rows:
        image = np.asarray(Image.open(tmp_path / row["image"]).convert("RGB"))
        assert check_image(image).ok and float(row["predicted_site1"]) == pytest.approx(
            Twin.load(twin).predict([image])[0][0, 1], rel=0.05, abs=0.5)  # fmt: skip
    # `twin predict` reads images too: the synthesized ones as listed in their CSV, and a folder.
    neurotwin("twin", "predict", twin, out, "--out", tmp_path / "p.csv")
    predicted = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["image"] for r in predicted] == [r["image"] for r in rows]
    for p, r in zip(predicted, rows, strict=True):
        assert float(p["site1"]) == pytest.approx(float(r["predicted_site1"]), abs=1e-4) and float(p["site1_sd"]) > 0
    neurotwin("twin", "predict", twin, folder, "--out", tmp_path / "f.csv")
    assert len(list(csv.DictReader(open(tmp_path / "f.csv")))) == 60
    # Starting from the training images the twin rates best for site1.
    start = neurotwin("synthesize", "--modality", "image", "--twin", twin, "--out", tmp_path / "s.csv", "--n", "2",
                      "--steps", "8", "--size", "96", "--roi", "site1", "--start", folder)  # fmt: skip
    assert "wrote 2 images" in start.stdout and len(list(csv.DictReader(open(tmp_path / "s.csv")))) == 2
    # One-site control with the hold chosen by the twin from the images it was fit on.
    ctl = neurotwin("synthesize", "--modality", "image", "--twin", twin, "--out", tmp_path / "c.csv", "--n", "1",
                    "--steps", "8", "--size", "96", "--roi", "site1", "--goal", "control", "--hold", "auto",
                    "--start", folder)  # fmt: skip
    assert "hold chosen by the twin:" in ctl.stdout and len(list(csv.DictReader(open(tmp_path / "c.csv")))) == 1
    for args, message in [(["--method", "cmaes"], "--start works with --method gradient only"),
                          (["--n", "61"], "60 image(s) found, --n 61 needs at least 61"),
                          (["--goal", "drive", "--hold", "auto"], "--hold auto works with --modality image"),
                          (["--goal", "control", "--hold", "x"], "--hold must be a number or 'auto'"),
                          (["--start", tmp_path / "none"], f"--start {tmp_path / 'none'}: no such image or folder"),
                          (["--out", tmp_path / "b"], f"--out {tmp_path / 'b'}: name the CSV to write, e.g. "
                                                       f"{tmp_path / 'b'}.csv")]:  # fmt: skip
        bad = neurotwin("synthesize", "--modality", "image", "--twin", twin, "--out", tmp_path / "b.csv", "--steps",
                        "8", "--start", folder, *args, check_ok=False)  # fmt: skip
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert not (tmp_path / "b.csv").exists() and not (tmp_path / "b").exists()
    # An image twin asked to choose sentences: said so, nothing written.
    (tmp_path / "pool.txt").write_text("A sentence of words to choose from.\n")
    bad = neurotwin("synthesize", "--twin", twin, "--pool", tmp_path / "pool.txt", "--out", tmp_path / "t.csv",
                    check_ok=False)  # fmt: skip
    assert bad.returncode == 2 and "models images; sentence synthesis needs a twin fit on sentences" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "t.csv").exists()
    # `twin score`: the images it was fit on (known by their pixels) are cross-validated, beside image baselines.
    score = neurotwin("twin", "score", twin, tmp_path / "train.csv", "--json", tmp_path / "score.json")
    assert "10-fold cross-validated Pearson r on 60 images" in score.stdout, score.stdout
    scores = json.loads((tmp_path / "score.json").read_text())["targets"]
    assert set(scores["site2"]) == {"twin", "mean luminance", "RMS contrast"}
    site2 = {name: s["r"] for name, s in scores["site2"].items()}  # the site its fit read best (LOO r 0.53)
    assert site2["twin"] > max(0.3, site2["mean luminance"], site2["RMS contrast"]), site2
    # Bad input: a text file posing as an image; a text twin asked for images. Nothing written.
    (folder / "0.png").write_text("not a png")
    bad = neurotwin("twin", "fit", tmp_path / "train.csv", "--modality", "image", "--model", "gabor-v1", "--out",
                    tmp_path / "bad.h5", check_ok=False)  # fmt: skip
    assert bad.returncode == 2 and "not an image file" in bad.stderr and not (tmp_path / "bad.h5").exists()


def test_presenter_refuses_unsafe_images_and_shows_safe_ones(tmp_path):
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "control_loop.cli", "present", "--null", "--bind",
                             f"tcp://127.0.0.1:{port}", "--trigger-key", "", "--heartbeat", "0.3"],
                            cwd=ROOT, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        client = PeerClient(f"tcp://127.0.0.1:{port}", heartbeat=0.3)
        end = wait_up(client, 60)
        safe = np.full((64, 64, 3), 128, np.uint8)
        safe[24:40, 24:40] = 160
        trials = [
            {"trial": 0, "stimulus_id": 1, "kind": "image", "image": _png(GRATING), "onset": 0.2, "duration": 0.2},
            {"trial": 1, "stimulus_id": 2, "kind": "image", "image": _png(safe), "onset": 0.6, "duration": 0.2},
            {"trial": 2, "stimulus_id": 3, "kind": "image", "image": _png(RED), "onset": 1.0, "duration": 0.2},
        ]
        client.send_reliable("schedule", run=1, trials=trials)
        got = []  # refusals come back as soon as the schedule is checked, then `ready`
        while not any(m["type"] == "ready" for m in got) and time.monotonic() < end:
            got += client.poll(0.05)
        assert [m["type"] for m in got] == ["refused", "refused", "ready"] and got[-1]["trials"] == 1
        client.send_reliable("trigger", run=1, volume=0, time=client.clock())
        got = got[:2]
        while len(got) < 3 and time.monotonic() < end:
            got += client.poll(0.05)
        by_trial = {m["trial"]: m for m in got}
        assert by_trial[0]["type"] == "refused" and "regular high-contrast pattern" in by_trial[0]["reason"]
        assert by_trial[2]["type"] == "refused" and "saturated red" in by_trial[2]["reason"]
        assert by_trial[1]["type"] == "presented"
        client.close()
    finally:
        proc.kill()
        proc.wait()
