"""Permutation engine checked against independent brute-force computations.

Every reference here is written out in the test in plain float64 numpy:

* OLS: ``beta = pinv(X) y``, ``sigma² = RSS / (n - rank X)``,
  ``t = c·beta / sqrt(sigma² c (XᵀX)⁺ cᵀ)``,
  ``F = (Cb)ᵀ [C (XᵀX)⁺ Cᵀ]⁻¹ (Cb) / (q sigma²)``;
* shufflings enumerated with :mod:`itertools` (all sign patterns, all
  permutations, all within-block permutations), the identity included, so
  the exact permutation p-value is ``#{all >= observed} / #all``;
* Freedman–Lane: for each permutation ``P`` the data are
  ``P Rz + Hz Y`` (``Rz`` the residuals on the nuisance ``Z = X null(C)``)
  refitted with the full model;
* TFCE as the stepped sum ``Σ e(h)^E h^H dh`` over midpoints of height
  steps, clusters with :func:`scipy.ndimage.label`.

The engine works in float32 and counts a null value within 1e-6 (relative)
below the observed one as a tie. For exact comparisons (``==``), the data
keep only voxels whose reference statistics are either exact ties (float64
equality up to 1e-10, relative) or clearly apart (more than 5e-5, relative)
from the observed value, so that float32 rounding cannot decide a count.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest
from scipy import linalg, ndimage, stats

from bids_group_app.inference import shards
from bids_group_app.stats.glm import contrast_maps, fit_ols
from bids_group_app.stats.permutation import ContrastTest, NullDistribution, Settings, choose_scheme, p_values
from bids_group_app.stats.shuffling import count_distinct, make_shufflings
from bids_group_app.stats.geometry import MaskGeometry, cluster_measures, tfce_volumes

TIE = 1e-10        # relative: mathematically equal statistics (float64 rounding only)
GAP = 5e-5         # relative: below this (and above TIE) float32 cannot resolve the order
STRUCTURE_RANK = {6: 1, 18: 2, 26: 3}


# --------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------
def ols_stat(X, Y, C, test):
    """t or F of every column of Y (..., n, v) by plain float64 OLS."""
    X = np.asarray(X, dtype=np.float64)
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    Y = np.asarray(Y, dtype=np.float64)
    dof = X.shape[0] - np.linalg.matrix_rank(X)
    pinv = np.linalg.pinv(X)
    beta = pinv @ Y
    resid = Y - X @ beta
    sigma2 = np.einsum("...nv,...nv->...v", resid, resid) / dof
    cov = C @ pinv @ pinv.T @ C.T          # C (XᵀX)⁺ Cᵀ
    cb = C @ beta
    if test == "t":
        return cb[..., 0, :] / np.sqrt(sigma2 * cov[0, 0])
    M = np.linalg.inv(cov)
    return np.einsum("...qv,qr,...rv->...v", cb, M, cb) / (C.shape[0] * sigma2)


def freedman_lane_stats(Y, X, C, test, orders):
    """Statistic for every permutation (rows of ``orders``): ``P Rz + Hz Y`` refitted."""
    X = np.asarray(X, dtype=np.float64)
    Z = X @ linalg.null_space(np.atleast_2d(C))
    Hz = Z @ np.linalg.pinv(Z)
    fitted = Hz @ Y
    Rz = Y - fitted
    return ols_stat(X, Rz[np.asarray(orders)] + fitted, C, test)


def count_ge(values, observed):
    """#{values >= observed}, mathematically equal values (float64 rounding) counted."""
    return np.sum(values >= observed - TIE * np.maximum(np.abs(observed), 1.0), axis=0)


def reference_p(all_stats, identity, two_sided=False):
    """Exact p and FWE p from the statistics of ALL shufflings (identity included)."""
    compared = np.abs(all_stats) if two_sided else all_stats
    observed = compared[identity]
    total = len(compared)
    maxima = compared.max(axis=1)
    p = count_ge(compared, observed[None]) / total
    pfwe = count_ge(maxima[:, None], observed[None]) / total
    return p, pfwe


def _ambiguous(values, observed):
    rel = np.abs(values - observed) / np.maximum(np.abs(observed), 1.0)
    return (rel > TIE) & (rel < GAP)


def resolvable(all_stats, identity, two_sided=False):
    """Voxels whose counts (uncorrected and FWE over the kept voxels) float32 can decide."""
    compared = np.abs(all_stats) if two_sided else all_stats
    observed = compared[identity]
    keep = ~_ambiguous(compared, observed[None]).any(axis=0)
    while True:
        maxima = compared[:, keep].max(axis=1)
        bad = keep & _ambiguous(maxima[:, None], observed[None]).any(axis=0)
        if not bad.any():
            return keep
        keep &= ~bad


def tfce_reference(volume, dh, E, H, connectivity):
    """Stepped TFCE: Σ_k e(h_k)^E h_k^H dh, h_k = (k + 1/2) dh (positive part)."""
    volume = np.asarray(volume, dtype=np.float64)
    structure = ndimage.generate_binary_structure(3, STRUCTURE_RANK[connectivity])
    out = np.zeros_like(volume)
    for k in range(int(np.ceil(volume.max() / dh))):
        h = (k + 0.5) * dh
        labels, n = ndimage.label(volume >= h, structure)
        if not n:
            continue
        extent = np.bincount(labels.ravel()).astype(np.float64)
        extent[0] = 0.0
        out += extent[labels] ** E * h ** H * dh * (labels > 0)
    return out


def line_geometry(v):
    """Geometry for voxel-wise tests (no neighbourhood needed)."""
    return MaskGeometry(np.ones((v, 1, 1), dtype=bool))


def all_sign_patterns(n):
    return np.array(list(itertools.product((1.0, -1.0), repeat=n)))


# --------------------------------------------------------------------------
# 1. Exhaustive sign-flips, one-sample
# --------------------------------------------------------------------------
def _one_sample_data():
    rng = np.random.default_rng(11)
    n = 8
    columns = []
    # integer data: many exact ties between sign patterns (equal sums), large t
    while len(columns) < 40:
        y = rng.integers(-6, 12, size=n).astype(np.float64)
        # |t| >= 0.5 here; exact ties at small |t| are covered by the next test
        if np.ptp(np.abs(y)) > 0 and np.all(y != 0) and abs(y.sum()) >= 0.5 * np.sqrt(n * (y @ y) / 7):
            columns.append(y)
    ints = np.column_stack(columns)
    cont = rng.normal(0.4, 1.0, size=(n, 40))
    planted = rng.normal(3.0, 0.5, size=(n, 3))
    Y = np.column_stack([ints, cont, planted, ints[:, :1], -ints[:, 1:2]])  # a copy and a negated copy
    return Y


@pytest.mark.parametrize("two_sided", [False, True], ids=["one-sided", "two-sided"])
def test_exhaustive_signflip_matches_brute_force(two_sided):
    Y = _one_sample_data()
    n = Y.shape[0]
    X = np.ones((n, 1))
    signs = all_sign_patterns(n)                              # 256, identity first
    t_all = ols_stat(X, signs[:, :, None] * Y[None], [1.0], "t")  # (256, v)
    keep = resolvable(t_all, 0, two_sided)
    assert keep.sum() >= 60
    Y, t_all = Y[:, keep], t_all[:, keep]
    ref_p, ref_pfwe = reference_p(t_all, 0, two_sided)

    shufflings = make_shufflings(X, "signflip", n_perm=1000, seed=0)
    assert shufflings.exhaustive and len(shufflings) == 255
    test = ContrastTest(Y, X, np.array([1.0]), "t", line_geometry(Y.shape[1]), shufflings,
                        Settings(two_sided=two_sided))
    np.testing.assert_allclose(test.observed.stat, t_all[0], rtol=1e-5, atol=1e-6)
    p = p_values(test, test.null())
    assert np.array_equal(p["p"], ref_p)
    assert np.array_equal(p["pmaxt"], ref_pfwe)
    assert ref_p.min() == (2 if two_sided else 1) / 256 and ref_p.max() > 0.5   # spans the range


@pytest.mark.parametrize("two_sided", [False, True], ids=["one-sided", "two-sided"])
def test_exhaustive_signflip_counts_ties_at_small_t(two_sided):
    rng = np.random.default_rng(0)
    n = 8
    Y = rng.integers(-9, 10, size=(n, 400)).astype(np.float64)
    Y = Y[:, (np.ptp(np.abs(Y), axis=0) > 0) & np.all(Y != 0, axis=0) & (np.abs(Y.sum(axis=0)) <= 2)]
    assert Y.shape[1] >= 20 and (Y.sum(axis=0) == 0).any()   # exact ties, including t = 0
    X = np.ones((n, 1))
    t_all = ols_stat(X, all_sign_patterns(n)[:, :, None] * Y[None], [1.0], "t")
    ref_p, _ = reference_p(t_all, 0, two_sided)
    shufflings = make_shufflings(X, "signflip", n_perm=1000, seed=0)
    test = ContrastTest(Y, X, np.array([1.0]), "t", line_geometry(Y.shape[1]), shufflings,
                        Settings(two_sided=two_sided))
    assert np.array_equal(p_values(test, test.null())["p"], ref_p)


# --------------------------------------------------------------------------
# 2. Freedman–Lane, exhaustive permutations (n = 7, 5040)
# --------------------------------------------------------------------------
def _regression_data(n_columns):
    rng = np.random.default_rng(7)
    n = 7
    X = np.column_stack([np.ones(n), rng.normal(size=(n, n_columns - 1))])
    noise = rng.normal(size=(n, 60))
    Y = 0.8 * X[:, 1:2] + noise                               # nuisance effect everywhere
    Y[:, :6] += 2.5 * X[:, -1:]                              # planted tested effect
    return X, Y


@pytest.mark.parametrize("case", ["t", "t-two-sided", "F"])
def test_freedman_lane_matches_brute_force(case):
    if case == "F":
        X, Y = _regression_data(4)                           # intercept, nuisance, two tested
        C, test_kind = np.array([[0, 0, 1.0, 0], [0, 0, 0, 1.0]]), "F"
    else:
        X, Y = _regression_data(3)                           # intercept, nuisance, tested
        C, test_kind = np.array([0, 0, 1.0]), "t"
    two_sided = case == "t-two-sided"
    orders = np.array(list(itertools.permutations(range(len(X)))))  # 5040, identity first
    stat_all = freedman_lane_stats(Y, X, C, test_kind, orders)
    keep = resolvable(stat_all, 0, two_sided)
    assert keep.sum() >= 30
    Y, stat_all = Y[:, keep], stat_all[:, keep]
    ref_p, ref_pfwe = reference_p(stat_all, 0, two_sided)

    assert choose_scheme(X, [C]) == "permute"
    shufflings = make_shufflings(X, "permute", n_perm=100_000, seed=1)
    assert shufflings.exhaustive and len(shufflings) == 5039
    test = ContrastTest(Y, X, C, test_kind, line_geometry(Y.shape[1]), shufflings, Settings(two_sided=two_sided))
    assert test.prep.nuisance_rank >= 1                       # a real Freedman–Lane case
    np.testing.assert_allclose(test.observed.stat, stat_all[0], rtol=1e-5, atol=1e-6)
    p = p_values(test, test.null())
    assert np.array_equal(p["p"], ref_p)
    assert np.array_equal(p["pmaxt"], ref_pfwe)
    assert ref_p.min() < 0.01 and ref_p.max() > 0.5


# --------------------------------------------------------------------------
# 3. Exchangeability blocks
# --------------------------------------------------------------------------
def _rm_design(n_subjects=4, n_conditions=3):
    subject = np.repeat(np.arange(n_subjects), n_conditions)
    condition = np.tile(np.arange(n_conditions), n_subjects)
    X = np.column_stack([np.eye(n_conditions)[condition], np.eye(n_subjects)[subject]])
    return X, subject, condition


@pytest.mark.parametrize("test_kind", ["t", "F"])
def test_within_block_permutations_match_brute_force(test_kind):
    X, subject, condition = _rm_design()
    assert np.linalg.matrix_rank(X) == 6 < X.shape[1]         # rank deficient
    rng = np.random.default_rng(3)
    Y = 2.0 * subject[:, None] + rng.normal(size=(12, 80))   # large subject effects
    Y[:, :8] += 1.5 * (condition == 0)[:, None]
    if test_kind == "t":
        C = np.array([1.0, -1.0, 0, 0, 0, 0, 0])
    else:
        C = np.array([[1.0, -1.0, 0, 0, 0, 0, 0], [0, 1.0, -1.0, 0, 0, 0, 0]])
    # all 6^4 within-subject permutations, identity first
    blocks = [np.flatnonzero(subject == s) for s in range(4)]
    orders = []
    for combo in itertools.product(itertools.permutations(range(3)), repeat=4):
        order = np.empty(12, dtype=int)
        for rows, perm in zip(blocks, combo):
            order[rows] = rows[list(perm)]
        orders.append(order)
    orders = np.array(orders)
    assert len(orders) == 1296 and np.array_equal(orders[0], np.arange(12))
    stat_all = freedman_lane_stats(Y, X, C, test_kind, orders)
    keep = resolvable(stat_all, 0)
    assert keep.sum() >= 40
    Y, stat_all = Y[:, keep], stat_all[:, keep]
    ref_p, ref_pfwe = reference_p(stat_all, 0)

    assert choose_scheme(X, [C], subject) == "permute"
    assert count_distinct(X, "permute", subject) == 1296
    shufflings = make_shufflings(X, "permute", n_perm=5000, seed=2, blocks=subject)
    assert shufflings.exhaustive and len(shufflings) == 1295
    test = ContrastTest(Y, X, C, test_kind, line_geometry(Y.shape[1]), shufflings, Settings(), blocks=subject)
    np.testing.assert_allclose(test.observed.stat, stat_all[0], rtol=1e-5, atol=1e-6)
    p = p_values(test, test.null())
    assert np.array_equal(p["p"], ref_p)
    assert np.array_equal(p["pmaxt"], ref_pfwe)
    assert ref_p.min() < 0.01


def _whole_block_orders(groups, n):
    """Every whole-block permutation (rows matched by position), identity first."""
    out = []
    for perm in itertools.permutations(range(len(groups))):
        order = np.empty(n, dtype=int)
        for position, source in enumerate(perm):
            order[groups[position]] = groups[source]
        out.append(order)
    return out


def test_whole_block_enumeration():
    # 3 blocks of 2 rows; rows within a block differ, blocks differ by a block covariate
    blocks = np.array([0, 0, 1, 1, 2, 2])
    groups = [np.flatnonzero(blocks == b) for b in range(3)]
    X = np.column_stack([np.tile([1.0, 0.0], 3), np.tile([0.0, 1.0], 3), np.repeat([0.3, -1.2, 0.9], 2)])
    assert count_distinct(X, "permute", blocks, whole_block=True) == 6
    sh = make_shufflings(X, "permute", n_perm=100, seed=0, blocks=blocks, whole_block=True)
    assert sh.exhaustive and len(sh) == 5
    assert np.all(sh.signs == 1)
    expected = {tuple(o) for o in _whole_block_orders(groups, 6)[1:]}
    assert {tuple(o) for o in sh.orders} == expected

    # two blocks with identical design rows: 3!/2! distinct permuted designs
    X2 = X.copy()
    X2[4:, 2] = X2[0, 2]
    assert count_distinct(X2, "permute", blocks, whole_block=True) == 3
    sh2 = make_shufflings(X2, "permute", n_perm=100, seed=0, blocks=blocks, whole_block=True)
    assert sh2.exhaustive and len(sh2) == 2
    designs = {tuple(map(tuple, X2[o])) for o in sh2.orders}
    assert len(designs) == 2 and tuple(map(tuple, X2)) not in designs
    valid = {tuple(o) for o in _whole_block_orders(groups, 6)}
    assert all(tuple(o) in valid for o in sh2.orders)

    # whole-block sign flips: 2^n_blocks patterns, constant within blocks
    assert count_distinct(X, "signflip", blocks, whole_block=True) == 8
    flips = make_shufflings(X, "signflip", n_perm=100, seed=0, blocks=blocks, whole_block=True)
    assert flips.exhaustive and len(flips) == 7
    assert all(np.array_equal(o, np.arange(6)) for o in flips.orders)
    patterns = {tuple(s[[0, 2, 4]]) for s in flips.signs}
    assert patterns == set(itertools.product((1, -1), repeat=3)) - {(1, 1, 1)}
    assert np.all(flips.signs[:, 0::2] == flips.signs[:, 1::2])

    # randomly drawn whole-block permutations stay valid; unequal blocks are refused
    big_blocks = np.repeat(np.arange(8), 2)
    big_groups = [np.flatnonzero(big_blocks == b) for b in range(8)]
    Xb = np.column_stack([np.tile([1.0, 0.0], 8), np.repeat(np.arange(8.0), 2)])
    drawn = make_shufflings(Xb, "permute", n_perm=50, seed=4, blocks=big_blocks, whole_block=True)
    assert not drawn.exhaustive and len(drawn) == 50
    for order in drawn.orders:
        sources = [np.flatnonzero([np.array_equal(order[g], h) for h in big_groups]) for g in big_groups]
        assert all(len(s) == 1 for s in sources)
        assert sorted(int(s[0]) for s in sources) == list(range(8))
    with pytest.raises(ValueError):
        make_shufflings(X, "permute", 10, 0, blocks=np.array([0, 0, 0, 1, 1, 2]), whole_block=True)


# --------------------------------------------------------------------------
# 4. Shufflings: counts, exhaustive vs drawn, scheme choice
# --------------------------------------------------------------------------
def _two_sample(n1, n2):
    return np.column_stack([np.r_[np.ones(n1), np.zeros(n2)], np.r_[np.zeros(n1), np.ones(n2)]])


@pytest.mark.parametrize("n1,n2", [(3, 3), (4, 6), (5, 2), (10, 12)])
def test_count_distinct_two_sample(n1, n2):
    n = n1 + n2
    assert count_distinct(_two_sample(n1, n2), "permute") == math.factorial(n) // (
        math.factorial(n1) * math.factorial(n2))


@pytest.mark.parametrize("n", [1, 5, 12])
def test_count_distinct_signflip(n):
    assert count_distinct(np.ones((n, 1)), "signflip") == 2 ** n
    blocks = np.arange(n) % 3
    assert count_distinct(np.ones((n, 1)), "signflip", blocks, whole_block=True) == 2 ** len(set(blocks))


def test_make_shufflings_exhaustive_two_sample():
    X = _two_sample(3, 3)
    labels = X[:, 0].astype(int)
    distinct = 20
    all_designs = {c for c in itertools.permutations(labels.tolist())}
    assert len(all_designs) == distinct
    for n_perm in (distinct - 1, 5000):
        sh = make_shufflings(X, "permute", n_perm=n_perm, seed=0)
        assert sh.exhaustive and len(sh) == distinct - 1
        designs = [tuple(labels[o]) for o in sh.orders]
        assert len(set(designs)) == distinct - 1                # all distinct
        assert tuple(labels) not in designs                      # identity excluded
        assert set(designs) | {tuple(labels)} == all_designs     # every one listed
        assert np.all(sh.signs == 1)
    drawn = make_shufflings(X, "permute", n_perm=distinct - 2, seed=0)
    assert not drawn.exhaustive and len(drawn) == distinct - 2


def test_make_shufflings_exhaustive_signflip():
    X = np.ones((5, 1))
    sh = make_shufflings(X, "signflip", n_perm=31, seed=0)
    assert sh.exhaustive and len(sh) == 31
    patterns = {tuple(s) for s in sh.signs}
    assert patterns == set(itertools.product((1, -1), repeat=5)) - {(1,) * 5}
    assert all(np.array_equal(o, np.arange(5)) for o in sh.orders)
    drawn = make_shufflings(X, "signflip", n_perm=30, seed=0)
    assert not drawn.exhaustive and len(drawn) == 30


@pytest.mark.parametrize("scheme,X", [
    ("signflip", np.ones((30, 1))),
    ("permute", _two_sample(14, 16)),
    ("both", np.column_stack([np.ones(25), np.arange(25.0)])),
])
def test_make_shufflings_drawn_deterministic(scheme, X):
    n = len(X)
    a = make_shufflings(X, scheme, n_perm=200, seed=42)
    b = make_shufflings(X, scheme, n_perm=200, seed=42)
    c = make_shufflings(X, scheme, n_perm=200, seed=43)
    assert not a.exhaustive and len(a) == 200
    assert np.array_equal(a.orders, b.orders) and np.array_equal(a.signs, b.signs)
    assert not (np.array_equal(a.orders, c.orders) and np.array_equal(a.signs, c.signs))
    assert a.orders.shape == (200, n) and a.signs.shape == (200, n)
    for order in a.orders:                                   # every order is a permutation
        assert np.array_equal(np.sort(order), np.arange(n))
    assert set(np.unique(a.signs)) <= {-1, 1}
    if scheme == "signflip":
        assert np.all(a.orders == np.arange(n)) and (a.signs == -1).any()
    if scheme == "permute":
        assert np.all(a.signs == 1) and (a.orders != np.arange(n)).any()
    if scheme == "both":
        assert (a.signs == -1).any() and (a.orders != np.arange(n)).any()


def test_choose_scheme():
    rng = np.random.default_rng(0)
    assert choose_scheme(np.ones((12, 1)), [np.array([1.0])]) == "signflip"
    assert choose_scheme(_two_sample(6, 7), [np.array([1.0, -1.0])]) == "permute"
    x = rng.normal(5.0, 1.0, size=20)                         # not demeaned
    X = np.column_stack([np.ones(20), x])
    assert choose_scheme(X, [np.array([0, 1.0])]) == "permute"
    assert choose_scheme(X, [np.array([1.0, 0])]) == "signflip"
    assert choose_scheme(X, [np.array([1.0, 0]), np.array([0, 1.0])]) == "both"
    Xrm, subject, _ = _rm_design(5, 3)
    contrasts = [np.r_[1.0, -1.0, 0, np.zeros(5)], np.vstack([np.r_[1.0, -1.0, 0, np.zeros(5)],
                                                              np.r_[0, 1.0, -1.0, np.zeros(5)]])]
    assert choose_scheme(Xrm, contrasts, subject) == "permute"


# --------------------------------------------------------------------------
# 5. TFCE
# --------------------------------------------------------------------------
def _smooth_map(shape=(16, 16, 16), negative=False):
    grid = np.indices(shape).astype(np.float64)
    def blob(center, sigma, height):
        d2 = sum((g - c) ** 2 for g, c in zip(grid, center))
        return height * np.exp(-d2 / (2 * sigma ** 2))
    volume = blob((5, 5, 6), 2.0, 4.0) + blob((11, 10, 9), 2.5, 3.0) + blob((4, 12, 4), 1.5, 2.0)
    volume -= 0.3
    for i in range(2, 14):                                   # a ridge joined only through corners
        volume[i, i, 15 - i] = max(volume[i, i, 15 - i], 2.5)
    if negative:
        volume -= blob((12, 4, 12), 2.0, 3.5)
    return volume.astype(np.float32)


def _rel_error(approx, exact):
    return float(np.abs(approx - exact).sum() / np.abs(exact).sum())


def test_tfce_converges_to_exact_integral():
    volume = _smooth_map()
    exact = tfce_volumes(volume, 6, 0.5, 2.0, False).astype(np.float64)
    assert exact.shape == volume.shape and np.all(exact[volume <= 0] == 0)
    steps = (0.2, 0.1, 0.05, 0.025, 0.0125)
    errors = [_rel_error(tfce_reference(volume, dh, 0.5, 2.0, 6), exact) for dh in steps]
    for coarse, fine in zip(errors, errors[1:]):
        assert 0.3 * coarse < fine < 0.75 * coarse, errors    # ~ linear in dh (jumps of e(h))
    assert errors[-1] < 0.01, errors


@pytest.mark.parametrize("E,H,connectivity", [(1.0, 2.0, 6), (0.5, 1.0, 6), (0.5, 2.0, 26), (2.0 / 3, 2.0, 18)])
def test_tfce_parameters_honoured(E, H, connectivity):
    volume = _smooth_map()
    exact = tfce_volumes(volume, connectivity, E, H, False).astype(np.float64)
    error = _rel_error(tfce_reference(volume, 0.01, E, H, connectivity), exact)
    assert error < 0.01
    default = tfce_volumes(volume, 6, 0.5, 2.0, False).astype(np.float64)
    assert _rel_error(default, exact) > 5 * error             # the parameters change the result


def test_tfce_connectivity_joins_diagonal_neighbours():
    volume = np.zeros((5, 5, 5), dtype=np.float32)
    volume[1, 1, 1] = volume[2, 2, 2] = 2.0                  # corner neighbours only
    six = tfce_volumes(volume, 6, 0.5, 2.0, False)
    twenty_six = tfce_volumes(volume, 26, 0.5, 2.0, False)
    # exact: ∫_0^2 e^0.5 h^2 dh = e^0.5 · 8/3
    np.testing.assert_allclose(six[1, 1, 1], 8 / 3, rtol=1e-5)
    np.testing.assert_allclose(twenty_six[1, 1, 1], math.sqrt(2) * 8 / 3, rtol=1e-5)


def test_tfce_two_sided_negative_part():
    volume = _smooth_map(negative=True)
    enhanced = tfce_volumes(volume, 6, 0.5, 2.0, True).astype(np.float64)
    positive = tfce_reference(np.maximum(volume, 0), 0.01, 0.5, 2.0, 6)
    negative = tfce_reference(np.maximum(-volume, 0), 0.01, 0.5, 2.0, 6)
    assert _rel_error(enhanced, positive - negative) < 0.01
    assert enhanced.min() < 0 and np.all(enhanced[volume < 0] <= 0)


# --------------------------------------------------------------------------
# 6. Clusters
# --------------------------------------------------------------------------
def test_cluster_measures_hand_counts():
    volume = np.zeros((10, 10, 10), dtype=np.float32)
    volume[1:3, 1:3, 1:3] = 3.0                              # A: 8 voxels, mass 8 · 1
    volume[6, 6, 6], volume[6, 6, 7], volume[6, 7, 7] = 2.5, 4.0, 5.0   # B: 3 voxels, mass 0.5+2+3
    volume[8, 1, 1], volume[9, 2, 2] = 6.0, 6.0              # C: diagonal pair
    volume[5, 1, 8], volume[5, 2, 8] = -3.0, -4.5            # N: negative, 2 voxels, mass 1 + 2.5
    volume[0, 9, 9] = 1.9                                    # below threshold
    threshold = 2.0
    mask = np.ones(volume.shape, dtype=bool)
    six, full = MaskGeometry(mask, 6), MaskGeometry(mask, 26)
    values = volume[mask]

    def measures(geometry, two_sided):
        labels, sizes, masses = cluster_measures(values, threshold, geometry, two_sided)
        return labels.reshape(volume.shape), sizes, masses

    labels, sizes, masses = measures(six, False)
    assert sorted(sizes.values()) == [1, 1, 3, 8] and set(sizes) == {1, 2, 3, 4}
    assert np.all(labels[volume <= threshold] == 0)
    a, b = labels[1, 1, 1], labels[6, 6, 6]
    assert sizes[a] == 8 and masses[a] == pytest.approx(8.0)
    assert sizes[b] == 3 and masses[b] == pytest.approx(5.5)
    assert np.all(labels[1:3, 1:3, 1:3] == a) and labels[6, 7, 7] == b
    assert labels[8, 1, 1] != labels[9, 2, 2] and masses[labels[8, 1, 1]] == pytest.approx(4.0)

    labels, sizes, masses = measures(six, True)
    neg = labels[5, 1, 8]
    assert neg < 0 and labels[5, 2, 8] == neg and set(sizes) == {1, 2, 3, 4, -1}
    assert sizes[neg] == 2 and masses[neg] == pytest.approx(3.5)
    assert sizes[labels[1, 1, 1]] == 8                        # positive ones unchanged

    labels, sizes, masses = measures(full, True)
    c = labels[8, 1, 1]
    assert labels[9, 2, 2] == c and sizes[c] == 2 and masses[c] == pytest.approx(8.0)
    assert sorted(sizes.values()) == [2, 2, 3, 8]


def _gap_threshold(values, lo, hi):
    """A threshold in the widest gap of the sorted values within [lo, hi]."""
    v = np.sort(values[(values > lo) & (values < hi)])
    i = int(np.argmax(np.diff(v)))
    return 0.5 * (v[i] + v[i + 1]), v[i + 1] - v[i]


def test_cluster_inference_matches_brute_force():
    rng = np.random.default_rng(5)
    shape = (7, 7, 6)
    mask = np.ones(shape, dtype=bool)
    mask[0, 0, :] = mask[-1, -1, :] = False                  # a box with missing corners
    n = 8
    noise = ndimage.gaussian_filter(rng.normal(size=(n,) + shape), sigma=(0, 1.0, 1.0, 1.0))
    noise /= noise.std()
    noise[:, 1:4, 1:4, 1:3] += 1.2                           # blobs with an effect
    noise[:, 4:6, 4:7, 3:6] += 0.8
    Y = noise[:, mask]
    X = np.ones((n, 1))
    signs = all_sign_patterns(n)
    t_all = ols_stat(X, signs[:, :, None] * Y[None], [1.0], "t")   # (256, v), identity first
    threshold, gap = _gap_threshold(t_all.ravel(), 1.9, 2.6)
    assert gap / threshold > 1e-4
    p_form = float(stats.t.sf(threshold, n - 1))

    geometry = MaskGeometry(mask)
    shufflings = make_shufflings(X, "signflip", n_perm=1000, seed=0)
    test = ContrastTest(Y, X, np.array([1.0]), "t", geometry, shufflings, Settings(cluster_forming_p=p_form))
    np.testing.assert_allclose(test.prep.cluster_threshold, threshold, rtol=1e-9)
    null = test.null()

    six = ndimage.generate_binary_structure(3, 1)

    def sizes_masses(t):
        vol = np.zeros(shape)
        vol[mask] = t
        labels, k = ndimage.label(vol > threshold, six)
        sizes = np.bincount(labels.ravel(), minlength=k + 1)[1:]
        masses = np.bincount(labels.ravel(), weights=(vol - threshold).ravel(), minlength=k + 1)[1:]
        return labels[mask], sizes, masses

    ref_max = [(s.max() if len(s) else 0, m.max() if len(m) else 0.0)
               for _, s, m in (sizes_masses(t) for t in t_all[1:])]
    ref_size = np.array([r[0] for r in ref_max], dtype=float)
    ref_mass = np.array([r[1] for r in ref_max])
    assert np.array_equal(np.sort(null.max_size), np.sort(ref_size))
    np.testing.assert_allclose(np.sort(null.max_mass), np.sort(ref_mass), rtol=1e-4, atol=1e-5)

    labels, sizes, masses = sizes_masses(t_all[0])
    assert sizes.max() >= 5                                   # the planted blob forms a cluster
    assert np.array_equal(test.observed.cluster_labels != 0, labels != 0)
    p = p_values(test, null)
    assert np.all(p["pmaxsize"][labels == 0] == 1.0) and np.all(p["pmaxmass"][labels == 0] == 1.0)
    for k, (size, mass) in enumerate(zip(sizes, masses), start=1):
        inside = labels == k
        assert np.all(p["pmaxsize"][inside] == (1 + np.sum(ref_size >= size)) / 256)
        engine_label = np.unique(test.observed.cluster_labels[inside])
        assert len(engine_label) == 1 and test.observed.cluster_sizes[int(engine_label[0])] == size
        if not np.any(np.abs(ref_mass - mass) < 1e-3 * mass):   # mass p only where float32 can tell
            assert np.all(p["pmaxmass"][inside] == (1 + np.sum(ref_mass >= mass)) / 256)


# --------------------------------------------------------------------------
# 7. Determinism: threads and shards
# --------------------------------------------------------------------------
def _spatial_problem():
    rng = np.random.default_rng(9)
    shape = (10, 9, 8)
    grid = np.indices(shape)
    mask = ((grid[0] - 4.5) ** 2 + (grid[1] - 4) ** 2 + (grid[2] - 3.5) ** 2) < 20
    n = 14
    vol = ndimage.gaussian_filter(rng.normal(size=(n,) + shape), sigma=(0, 1.2, 1.2, 1.2))
    vol /= vol.std()
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)])
    vol[:, 2:6, 2:6, 2:5] += 1.5 * X[:, 2, None, None, None]
    return vol[:, mask], X, MaskGeometry(mask)


def test_null_independent_of_threads_and_shards():
    Y, X, geometry = _spatial_problem()
    C = np.array([0, 0, 1.0])
    shufflings = make_shufflings(X, "permute", n_perm=90, seed=3)

    def make(n_jobs):
        settings = Settings(two_sided=True, tfce=True, cluster_forming_p=0.01, n_jobs=n_jobs)
        return ContrastTest(Y, X, C, "t", geometry, shufflings, settings)

    names = ("max_stat", "exceedances", "max_tfce", "max_size", "max_mass")
    single = make(1).null()
    threaded = make(2).null()
    for name in names:
        assert getattr(single, name) is not None
        assert np.array_equal(getattr(single, name), getattr(threaded, name)), name
    assert not np.isnan(single.max_tfce).any() and single.max_size.max() > 0

    test = make(1)
    assert test.n_batches >= 3
    parts = [test.null(batches=shards.shard_batches(test.n_batches, k, 3)) for k in range(1, 4)]
    assert all(np.isnan(part.max_stat).any() for part in parts)
    merged = NullDistribution.merge(parts)
    for name in names:
        assert np.array_equal(getattr(single, name), getattr(merged, name)), name
    p_single, p_merged = p_values(test, single), p_values(test, merged)
    assert p_single.keys() == p_merged.keys()
    for key in p_single:
        assert np.array_equal(p_single[key], p_merged[key]), key


# --------------------------------------------------------------------------
# 8. Observed statistics equal the parametric GLM
# --------------------------------------------------------------------------
@pytest.mark.parametrize("test_kind", ["t", "F"])
def test_observed_equals_glm(test_kind):
    rng = np.random.default_rng(13)
    n = 25
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(2.0, 1.0, size=n), rng.normal(size=n)])
    Y = rng.normal(size=(n, 300)) + 0.5 * X[:, 1:2]
    if test_kind == "t":
        C = np.array([0, 1.0, 0, 0])
    else:
        C = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    shufflings = make_shufflings(X, "permute", n_perm=10, seed=0)
    test = ContrastTest(Y, X, C, test_kind, line_geometry(300), shufflings, Settings())
    labels, results = fit_ols(Y, X)
    expected = contrast_maps(labels, results, C, test_kind).stat
    np.testing.assert_allclose(test.observed.stat, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(test.observed.stat, ols_stat(X, Y, C, test_kind), rtol=1e-4, atol=1e-6)


def test_observed_equals_glm_rank_deficient():
    X, subject, condition = _rm_design(6, 3)
    rng = np.random.default_rng(14)
    Y = rng.normal(size=(18, 200)) + subject[:, None]
    C = np.array([[1.0, -1.0, 0, *np.zeros(6)], [0, 1.0, -1.0, *np.zeros(6)]])
    shufflings = make_shufflings(X, "permute", n_perm=10, seed=0, blocks=subject)
    test = ContrastTest(Y, X, C, "F", line_geometry(200), shufflings, Settings(), blocks=subject)
    labels, results = fit_ols(Y, X)
    np.testing.assert_allclose(test.observed.stat, contrast_maps(labels, results, C, "F").stat, rtol=1e-4)
    np.testing.assert_allclose(test.observed.stat, ols_stat(X, Y, C, "F"), rtol=1e-4)


# --------------------------------------------------------------------------
# 9. Memory: permuted data are never materialised
# --------------------------------------------------------------------------
def _memory_problem(case, n_perm):
    rng = np.random.default_rng(21)
    n, v = 40, 20000
    Y = rng.normal(size=(n, v)).astype(np.float32)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    X, C, kind = {
        "slope": (np.column_stack([np.ones(n), x1]), np.array([0, 1.0]), "t"),
        "nuisance": (np.column_stack([np.ones(n), x1, x2]), np.array([0, 0, 1.0]), "t"),
        "F": (np.column_stack([np.ones(n), x1, x2]), np.array([[0, 1.0, 0], [0, 0, 1.0]]), "F"),
    }[case]
    shufflings = make_shufflings(X, "permute", n_perm=n_perm, seed=0)
    return Y, X, C, kind, MaskGeometry(np.ones((20, 20, 50), dtype=bool)), shufflings


def _peak_memory(Y, X, C, kind, geometry, shufflings):
    """Peak traced memory while constructing the test and computing its null."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        test = ContrastTest(Y, X, C, kind, geometry, shufflings, Settings())
        null = test.null()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not np.isnan(null.max_stat).any()
    return peak


@pytest.mark.parametrize("case", ["slope", "nuisance", "F"])
def test_null_memory_below_three_times_data(case):
    Y, *rest = _memory_problem(case, 500)
    ratio = _peak_memory(Y, *rest) / Y.nbytes
    print(f"{case}: peak traced memory = {ratio:.2f} x Y.nbytes")
    assert ratio < 3.0, f"{case}: peak {ratio:.2f} x Y.nbytes"


@pytest.mark.parametrize("case", ["slope", "nuisance", "F"])
def test_null_memory_does_not_grow_with_shufflings(case):
    """The permuted data are never formed: 500 shufflings need what one batch of 128 needs."""
    Y, X, C, kind, geometry, many = _memory_problem(case, 500)
    *_, one_batch = _memory_problem(case, 128)
    peak_many = _peak_memory(Y, X, C, kind, geometry, many)
    peak_one = _peak_memory(Y, X, C, kind, geometry, one_batch)
    assert peak_many < 1.1 * peak_one + 0.1 * Y.nbytes
    assert peak_many < 12 * Y.nbytes                          # permuted data would be 500 x Y.nbytes


# --------------------------------------------------------------------------
# 10. p-value convention
# --------------------------------------------------------------------------
def test_p_value_floor_and_planted_effect():
    rng = np.random.default_rng(17)
    shape = (8, 8, 8)
    mask = np.ones(shape, dtype=bool)
    n = 20
    vol = ndimage.gaussian_filter(rng.normal(size=(n,) + shape), sigma=(0, 1.0, 1.0, 1.0))
    vol /= vol.std()
    vol[:, 2:5, 2:5, 2:5] = 10.0 + 0.05 * rng.normal(size=(n, 3, 3, 3))   # huge one-sample effect
    Y = vol[:, mask]
    planted = np.zeros(shape, dtype=bool)
    planted[2:5, 2:5, 2:5] = True
    planted = planted[mask]
    X = np.ones((n, 1))
    n_perm = 99
    shufflings = make_shufflings(X, "signflip", n_perm=n_perm, seed=8)
    assert not shufflings.exhaustive and len(shufflings) == n_perm
    settings = Settings(tfce=True, cluster_forming_p=0.001)
    test = ContrastTest(Y, X, np.array([1.0]), "t", MaskGeometry(mask), shufflings, settings)
    p = p_values(test, test.null())
    floor = 1 / (1 + n_perm)
    for key in ("p", "pmaxt", "pmaxtfce", "pmaxsize", "pmaxmass"):
        assert np.all(p[key] >= floor) and np.all(p[key] <= 1.0), key
        assert np.all(p[key][planted] == floor), key
    assert np.all(p["pmaxt"][~planted] > floor)
    # the same with permutations of a regression slope
    x = rng.normal(size=n)
    Xr = np.column_stack([np.ones(n), x])
    Yr = rng.normal(size=(n, 50))
    Yr[:, :5] += 50.0 * x[:, None]
    sh = make_shufflings(Xr, "permute", n_perm=n_perm, seed=8)
    test = ContrastTest(Yr, Xr, np.array([0, 1.0]), "t", line_geometry(50), sh, Settings(two_sided=True))
    p = p_values(test, test.null())
    for key in ("p", "pmaxt"):
        assert np.all(p[key] >= floor) and np.all(p[key] <= 1.0)
        assert np.all(p[key][:5] == floor)
