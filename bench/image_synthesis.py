"""Image synthesis against a simulated electrophysiology array whose sites are not the twin.

Ground truth: V4-like sites of ``simulation.tuning.v4_tuning`` (a sparse random readout
of EfficientNet-Lite0 block 5 at one place, softplus output). "Measurements": Poisson
spike counts in a 0.5 s window, as the simulated ephys rig draws them. The twin
(EfficientNet-Lite0 blocks 2/4/7/10 on a 3 x 3 grid, ridge) is fit on 500 of 1,000
natural crops of scikit-image's sample photos. Printed per site: the true response to
gradient-synthesized drive images over the maximum over all 1,000 natural crops
(target: at least 1.3), synthesis starting from faint noise and from the two measured
natural images the twin rates best for the site (the target is judged on the latter);
one-site control (the target rises more than 1 natural-image SD while the others'
mean moves less than 1 SD, and whether the target ends above its natural maximum;
against the same sites under the plain drive goal; from the measured images the twin
rates best, with the hold chosen per site by the twin's own predictions: the strongest
hold that keeps the predicted target 1.3x above the twin's best-rated measured image);
and CMA-ES against gradient synthesis at equal numbers of twin evaluations.
Every synthesized image is rechecked against the safety limits.
Run: .venv/bin/python bench/image_synthesis.py [evaluations per image, default 384]
[--parts drive,control,cmaes] [--seed K: another draw of the synthesis seeds]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PARTS = ("drive", "control", "cmaes")


def main(evaluations: int = 384, parts: tuple[str, ...] = PARTS, seed: int = 0) -> None:
    import torch

    from simulation.tuning import v4_tuning
    from stimulus_synthesis import Goal
    from stimulus_synthesis.images import (
        best_starts,
        control_images,
        evolve_images,
        natural_images,
        synthesize_images,
        twin_predictor,
    )
    from stimulus_synthesis.safety import check_image
    from twin import Twin
    from twin.vision import ImagePlan

    torch.set_num_threads(2)
    truth = v4_tuning()
    natural = natural_images(1000, 128, seed=0)
    T = truth(natural)
    rng = np.random.default_rng(0)
    train = rng.choice(len(natural), 500, replace=False)
    window = 0.5
    counts = rng.poisson(T[train] * window)
    t = time.perf_counter()
    twin = Twin.fit([natural[i] for i in train], counts / window, list(truth.rois), plan=ImagePlan())
    rest = np.setdiff1d(np.arange(len(natural)), train)
    pred, _ = twin.predict([natural[i] for i in rest])
    r = [np.corrcoef(pred[:, j], T[rest, j])[0, 1] for j in range(T.shape[1])]
    print(f"twin fit on 500 natural trials in {time.perf_counter() - t:.0f} s; held-out r with the true rates: "
          + " ".join(f"{v:.2f}" for v in r))  # fmt: skip
    predict = twin_predictor(twin)
    nat_max, nat_mean = T.max(0), T.mean(0)
    unsafe = 0

    nat_sd = T.std(0)
    measured = [natural[i] for i in train]
    rated = twin.predict(measured)[0]  # the twin's predictions for the measured images, computed once
    drive_rates = []
    if "drive" in parts:
        print(f"\ndrive, gradient synthesis ({evaluations} steps, 2 images per site): true rate / natural "
              "maximum;\n  from faint noise, and from the 2 measured natural images the twin rates best "
              "for the site")  # fmt: skip
        ratios: dict[str, list[float]] = {"noise": [], "natural": []}
        for site in range(T.shape[1]):
            goal = Goal("drive", roi=site)
            row = []
            for start in ratios:
                begin = best_starts(predict, goal, measured, 2, predicted=rated) if start == "natural" else None
                out = synthesize_images(predict, goal, n=2, steps=evaluations, seed=seed + site, start=begin)
                true = truth([o.image for o in out])
                unsafe += sum(not check_image(o.image).ok for o in out)
                ratios[start].append(true[:, site].mean() / nat_max[site])
                row.append(f"from {start} {true[:, site].mean():6.1f} spikes/s, ratio {ratios[start][-1]:.2f}")
            drive_rates.append(true.mean(0))  # the natural start's, the method the target is judged on
            ok = ratios["natural"][-1] >= 1.3
            verdict = "PASS" if ok else "FAIL"
            print(f"  site{site}: natural max {nat_max[site]:6.1f} | " + " | ".join(row) + f"  {verdict}")
        for start, values in ratios.items():
            print(f"  from {start}: mean ratio over sites {np.mean(values):.2f}, lowest {min(values):.2f}; "
                  f"{sum(x >= 1.3 for x in values)}/{len(values)} sites at 1.3 or more")  # fmt: skip

    if "control" in parts:
        holds, bound = (1.0, 3.0, 6.0), 1.0
        print(
            f"\none-site control (raise one site, hold the others at the twin's mean over its training images), "
            f"from the measured images the twin rates best;\n  hold chosen per site from {holds} by the twin alone "
            f"(control_images): among holds whose predicted others' mean moves less than {bound} SD, the strongest "
            f"that keeps the predicted target at least 1.3x the twin's highest rating of a measured image;\n  "
            f"true changes in natural-image SDs of each site; PASS: the target rises more than {bound} SD while "
            f"the others' mean moves less than {bound} SD"
        )  # fmt: skip
        passed = beyond = 0
        for site in range(T.shape[1]):
            control = control_images(predict, site, measured, 2, holds, bound, predicted=rated, steps=evaluations,
                                     seed=seed + 100 + site)  # fmt: skip
            hold = control.hold
            rates = {h: truth([o.image for o in t]).mean(0) for h, t in control.tried.items()}  # each hold's, once
            unsafe += sum(not check_image(o.image).ok for t in control.tried.values() for o in t)
            every = {h: (v - nat_mean) / nat_sd for h, v in rates.items()}
            print(
                "    every hold, true target / others' mean in SD (not used to choose): "
                + "; ".join(f"{h:g}: {v[site]:+.1f} / {np.delete(v, site).mean():+.2f}" for h, v in every.items())
            )
            true, z = rates[hold], every[hold]
            others = np.delete(z, site).mean()
            versus = ""
            if drive_rates:
                versus = f" (drive goal: {np.delete((drive_rates[site] - nat_mean) / nat_sd, site).mean():+.2f} SD)"
            ok, above = z[site] > bound and abs(others) < bound, true[site] > nat_max[site]
            passed, beyond = passed + ok, beyond + (ok and above)
            print(f"  site{site}: hold {hold:g}: target {true[site]:6.1f} spikes/s (natural max {nat_max[site]:.1f}, "
                  f"{z[site]:+.1f} SD{', above it' if above else ''}); others' mean {others:+.2f} SD{versus} "
                  f"{'PASS' if ok else 'FAIL'}")  # fmt: skip
        print(f"  {passed}/{T.shape[1]} sites: target up more than {bound} SD, others' mean within {bound} SD; "
              f"{beyond} of them with the target above its natural maximum")  # fmt: skip

    if "cmaes" in parts:
        print(f"\nCMA-ES vs gradient at {evaluations} twin evaluations per image (2 images per site, sites 0-3)")
        for site in range(4):
            row = []
            for name, fn in [
                ("gradient", lambda g, s: synthesize_images(predict, g, n=2, steps=evaluations, seed=s)),
                ("cmaes", lambda g, s: evolve_images(predict, g, n=2, evaluations=evaluations, seed=s)),
            ]:
                t = time.perf_counter()
                out = fn(Goal("drive", roi=site), site)
                true = truth([o.image for o in out])[:, site]
                unsafe += sum(not check_image(o.image).ok for o in out)
                row.append(f"{name} predicted {np.mean([o.predicted[site] for o in out]):6.1f} true {true.mean():6.1f} "
                           f"({time.perf_counter() - t:.0f} s)")  # fmt: skip
            print(f"  site{site}: " + " | ".join(row))
    print(f"\nsynthesized images failing the safety check: {unsafe}")


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("evaluations", nargs="?", type=int, default=384, help="twin evaluations per image")
    args.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {','.join(PARTS)}")
    args.add_argument("--seed", type=int, default=0, help="offset of the synthesis seeds (the twin's data stay)")
    a = args.parse_args()
    main(a.evaluations, tuple(a.parts.split(",")), a.seed)
