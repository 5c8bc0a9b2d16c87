"""FWE rejection rates of the permutation engine under the null hypothesis.

Simulates ``R`` datasets of smoothed Gaussian noise with no effect of
interest and counts in how many of them the smallest family-wise (FWE)
p-value over the mask is at most ``alpha``, for voxel max-T (``pmaxt``),
TFCE (``pmaxtfce``), cluster size (``pmaxsize``) and cluster mass
(``pmaxmass``) inference. Two designs:

``one-sample``
    ``X = 1``, contrast ``[1]``, sign-flips.
``regression``
    ``X = [1, z, x]``: an intercept, a nuisance covariate ``z`` correlated
    with the tested covariate ``x`` (population r = 0.5) and ``x``;
    contrast ``[0, 0, 1]``, Freedman–Lane permutations. The data carry a
    real intercept and a real nuisance effect (``Y = mu + beta_z z + noise``)
    but no effect of ``x``, so a method that did not regress the nuisance
    out properly would reject far too often.

Each dataset: ``n`` subjects of white noise on a 32³ grid smoothed with a
Gaussian kernel (sigma 1.5 voxels), rescaled to unit variance, restricted to
a ball of ~8,000 voxels. The engine runs with ``Settings(tfce=True,
cluster_forming_p=0.01)``, one-sided.

Under H0 the number of rejections is (for an exact test at level
``alpha``) Binomial(R, alpha); the permutation test with ``n_perm``
shufflings rejects with probability ``floor(alpha (n_perm + 1)) /
(n_perm + 1)`` (0.0499 for n_perm = 500), i.e. alpha up to the
discreteness. PASS means the observed count lies in the central 99%
binomial interval ``[binom.ppf(0.005, R, alpha), binom.ppf(0.995, R,
alpha)]``. The Clopper–Pearson 99% interval of the observed rate is shown
as well.

Everything is seeded: dataset ``i`` of design ``d`` uses its own random
stream derived from ``(seed, d, i)``, so results do not depend on the
number of processes.

Run by hand::

    python benchmarks/null_fwe_rates.py --n-datasets 200 --n-perm 500 --seed 0

``tests/stats/test_null_rates.py`` (marked slow) calls :func:`null_fwe_rates`.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time

import numpy as np
from scipy import ndimage, stats
from threadpoolctl import threadpool_limits

from bids_group_app.stats.permutation import ContrastTest, Settings, choose_scheme, p_values
from bids_group_app.stats.shuffling import make_shufflings
from bids_group_app.stats.geometry import MaskGeometry

DESIGNS = ("one-sample", "regression")
DESIGN_CODES = {"one-sample": 1, "regression": 2}
INFERENCES = (("voxel", "pmaxt"), ("TFCE", "pmaxtfce"), ("cluster size", "pmaxsize"),
              ("cluster mass", "pmaxmass"))

GRID = 32
BALL_RADIUS = 12.5
SMOOTHING_SIGMA = 1.5
COVARIATE_CORRELATION = 0.5
INTERCEPT_EFFECT = 0.5       # in units of the noise SD
NUISANCE_EFFECT = 1.0        # per SD of z, in units of the noise SD
CLUSTER_FORMING_P = 0.01


def ball_mask(grid=GRID, radius=BALL_RADIUS):
    """A ball of voxels centred in a ``grid``³ volume (8,144 voxels by default)."""
    centre = (grid - 1) / 2
    coords = np.indices((grid, grid, grid)) - centre
    return (coords ** 2).sum(axis=0) <= radius ** 2


def smoothed_noise(rng, n, grid=GRID, sigma=SMOOTHING_SIGMA):
    """``n`` volumes of Gaussian white noise smoothed by ``sigma`` voxels, unit variance."""
    volumes = rng.standard_normal((n, grid, grid, grid))
    volumes = ndimage.gaussian_filter(volumes, sigma=(0, sigma, sigma, sigma))
    # variance of white noise after a (continuous) Gaussian kernel: (4 pi sigma²)^(-3/2)
    return volumes / (4 * math.pi * sigma ** 2) ** (-0.75)


def simulate(design, rng, n, mask):
    """One null dataset: ``(Y, X, contrast)``; ``Y`` is (n, voxels in mask)."""
    noise = smoothed_noise(rng, n)[:, mask]
    if design == "one-sample":
        return noise, np.ones((n, 1)), np.array([1.0])
    if design == "regression":
        x = rng.standard_normal(n)
        z = COVARIATE_CORRELATION * x + math.sqrt(1 - COVARIATE_CORRELATION ** 2) * rng.standard_normal(n)
        X = np.column_stack([np.ones(n), z, x])
        Y = noise + INTERCEPT_EFFECT + NUISANCE_EFFECT * z[:, None]
        return Y, X, np.array([0.0, 0.0, 1.0])
    raise ValueError(f"unknown design {design!r}")


def run_dataset(task):
    """Smallest FWE p of each inference (and uncorrected rate) for one dataset.

    ``task`` is ``(design, index, n_subjects, n_perm, seed, alpha, two_sided)``
    (a tuple, for multiprocessing).
    """
    design, index, n_subjects, n_perm, seed, alpha, two_sided = task
    stream = np.random.SeedSequence([seed, DESIGN_CODES[design], index])
    data_seed, shuffle_seed = stream.spawn(2)
    rng = np.random.default_rng(data_seed)
    mask = ball_mask()
    geometry = MaskGeometry(mask, connectivity=6)
    Y, X, contrast = simulate(design, rng, n_subjects, mask)
    scheme = choose_scheme(X, [contrast])
    shufflings = make_shufflings(X, scheme, n_perm, int(shuffle_seed.generate_state(1)[0]))
    settings = Settings(two_sided=two_sided, tfce=True, cluster_forming_p=CLUSTER_FORMING_P, n_jobs=1)
    with threadpool_limits(limits=1):
        test = ContrastTest(Y, X, contrast, "t", geometry, shufflings, settings)
        p = p_values(test, test.null())
    result = {key: float(p[key].min()) for _, key in INFERENCES}
    result["uncorrected"] = float(np.mean(p["p"] <= alpha))
    result["scheme"] = scheme
    result["n_shufflings"] = len(shufflings)
    return design, index, result


def binomial_interval(R, alpha, level=0.99):
    """Central ``level`` interval of the rejection count under H0: Binomial(R, alpha)."""
    tail = (1 - level) / 2
    return int(stats.binom.ppf(tail, R, alpha)), int(stats.binom.ppf(1 - tail, R, alpha))


def clopper_pearson(k, R, level=0.99):
    """Exact (Clopper–Pearson) ``level`` interval of a rate observed as k / R."""
    tail = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, R - k + 1))
    hi = 1.0 if k == R else float(stats.beta.ppf(1 - tail, k + 1, R - k))
    return lo, hi


def null_fwe_rates(n_datasets=200, n_perm=500, seed=0, n_subjects=20, designs=DESIGNS, alpha=0.05,
                   processes=2, two_sided=False, progress=False):
    """Simulate null datasets and count FWE rejections.

    Returns
    -------
    dict
        ``rows``: one dict per (design, inference) with ``rejections``,
        ``R``, ``rate``, ``interval`` (count bounds of the binomial 99%
        interval), ``clopper_pearson`` and ``passed``; ``uncorrected``: the
        mean per-voxel uncorrected rejection rate per design; ``min_p``: the
        smallest FWE p per design, inference and dataset; ``seconds``.
    """
    start = time.perf_counter()
    tasks = [(d, i, n_subjects, n_perm, seed, alpha, two_sided) for d in designs for i in range(n_datasets)]
    results = {d: [None] * n_datasets for d in designs}
    if processes > 1:
        context = multiprocessing.get_context("fork")
        with context.Pool(processes) as pool:
            iterator = pool.imap_unordered(run_dataset, tasks, chunksize=4)
            _collect(iterator, results, len(tasks), progress)
    else:
        _collect(map(run_dataset, tasks), results, len(tasks), progress)
    lo, hi = binomial_interval(n_datasets, alpha)
    rows = []
    min_p = {}
    uncorrected = {}
    for d in designs:
        min_p[d] = {key: np.array([r[key] for r in results[d]]) for _, key in INFERENCES}
        uncorrected[d] = float(np.mean([r["uncorrected"] for r in results[d]]))
        for name, key in INFERENCES:
            k = int(np.sum(min_p[d][key] <= alpha))
            rows.append({
                "design": d, "inference": name, "key": key, "rejections": k, "R": n_datasets,
                "rate": k / n_datasets, "interval": (lo, hi), "clopper_pearson": clopper_pearson(k, n_datasets),
                "passed": lo <= k <= hi, "scheme": results[d][0]["scheme"],
            })
    return {"rows": rows, "uncorrected": uncorrected, "min_p": min_p, "alpha": alpha, "n_perm": n_perm,
            "n_subjects": n_subjects, "seed": seed, "two_sided": two_sided,
            "seconds": time.perf_counter() - start}


def _collect(iterator, results, total, progress):
    for done, (design, index, result) in enumerate(iterator, 1):
        results[design][index] = result
        if progress and (done % 50 == 0 or done == total):
            print(f"  {done}/{total} datasets", file=sys.stderr, flush=True)


def format_table(summary):
    """The result table as text."""
    alpha = summary["alpha"]
    rows = summary["rows"]
    R = rows[0]["R"]
    lo, hi = rows[0]["interval"]
    lines = [
        f"Null FWE rejection rates at alpha = {alpha}: R = {R} datasets per design, n = {summary['n_subjects']} "
        f"subjects, n_perm = {summary['n_perm']}, seed = {summary['seed']}, "
        f"{'two' if summary['two_sided'] else 'one'}-sided, cluster-forming p = {CLUSTER_FORMING_P}",
        f"H0 count ~ Binomial({R}, {alpha}); PASS if count in [{lo}, {hi}] = binom.ppf(0.005/0.995, {R}, {alpha}); "
        f"rate interval [{lo / R:.3f}, {hi / R:.3f}]",
        "",
        f"{'design':<12} {'scheme':<9} {'inference':<13} {'rejections':>10} {'rate':>7}  "
        f"{'99% H0 interval':<16} {'Clopper-Pearson 99%':<20} result",
    ]
    for row in rows:
        cp = row["clopper_pearson"]
        lines.append(
            f"{row['design']:<12} {row['scheme']:<9} {row['inference']:<13} "
            f"{row['rejections']:>4}/{row['R']:<5} {row['rate']:>7.3f}  "
            f"[{lo / R:.3f}, {hi / R:.3f}]   [{cp[0]:.3f}, {cp[1]:.3f}]       {'PASS' if row['passed'] else 'FAIL'}"
        )
    lines.append("")
    for design, rate in summary["uncorrected"].items():
        lines.append(f"mean uncorrected voxel rejection rate ({design}): {rate:.4f} (expected ~{alpha})")
    lines.append(f"total runtime: {summary['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-datasets", type=int, default=200, help="simulated datasets per design (default 200)")
    parser.add_argument("--n-perm", type=int, default=500, help="shufflings per dataset (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    parser.add_argument("--n-subjects", type=int, default=20, help="subjects per dataset (default 20)")
    parser.add_argument("--alpha", type=float, default=0.05, help="FWE level (default 0.05)")
    parser.add_argument("--design", choices=DESIGNS, action="append",
                        help="design to simulate (repeatable; default both)")
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes over datasets (default 2)")
    parser.add_argument("--two-sided", action="store_true", help="two-sided t tests (default one-sided)")
    args = parser.parse_args(argv)
    summary = null_fwe_rates(n_datasets=args.n_datasets, n_perm=args.n_perm, seed=args.seed,
                             n_subjects=args.n_subjects, designs=tuple(args.design or DESIGNS), alpha=args.alpha,
                             processes=args.processes, two_sided=args.two_sided, progress=True)
    print(format_table(summary))
    return 0 if all(row["passed"] for row in summary["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
