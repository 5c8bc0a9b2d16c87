"""Mass-univariate OLS GLM and contrasts (arrays in, arrays out).

The fit and the contrast statistics are nilearn's (``run_glm`` with the
``ols`` noise model, ``compute_contrast``), so the maps equal those of
nilearn's ``SecondLevelModel`` on the same data. Conventions (nilearn's):
the t/F p-value is the upper tail; z is the standard-normal quantile of that
p-value; the residual degrees of freedom are ``n - rank(X)`` (the
pseudo-inverse handles rank-deficient designs, e.g. repeated measures with
subject columns). One correction to nilearn: its OLS estimates the residual
variance as RSS / (n - n_columns), which for a rank-deficient design
disagrees with its own degrees of freedom; here it is RSS / (n - rank(X)),
so t and F are exact for such designs too (for full-rank designs the maps
equal nilearn's).

Voxels with no residual variance (the design fits their values exactly,
e.g. the same value in every map) have undefined t and F (0/0; float
rounding turns them into |t| ~ 1e16): :func:`zero_variance_voxels` finds
them so that the caller can leave them out of the analysis mask before the
fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nilearn.glm.contrasts import compute_contrast
from nilearn.glm.first_level import run_glm


EPS = np.finfo(np.float64).eps
VOXELS_PER_CHUNK = 65536


@dataclass
class ContrastMaps:
    """Statistics of one contrast, one value per voxel.

    ``effect`` and ``variance`` are the contrast estimate and its variance
    for a t-contrast; for an F-contrast they are None (nilearn's F "effect"
    is a whitened quantity, not an estimate users can read).
    """

    test: str
    stat: np.ndarray
    z: np.ndarray
    p: np.ndarray
    dof: float
    df_num: int
    effect: np.ndarray | None = None
    variance: np.ndarray | None = None

    def as_dict(self):
        """Maps keyed by their BIDS ``stat-`` label."""
        maps = {self.test: self.stat, "z": self.z, "p": self.p}
        if self.effect is not None:
            maps = {"effect": self.effect, "variance": self.variance, **maps}
        return maps


def fit_ols(Y, X):
    """Fit the OLS model at every voxel.

    Parameters
    ----------
    Y : numpy.ndarray of shape (n_maps, n_voxels)
    X : numpy.ndarray of shape (n_maps, n_columns)

    Returns
    -------
    labels, results
        As nilearn's ``run_glm``; pass them to :func:`contrast_maps`.
    """
    X = np.asarray(X, dtype=np.float64)
    labels, results = run_glm(np.asarray(Y, dtype=np.float64), X, noise_model="ols")
    n, p = X.shape
    for result in results.values():
        # nilearn's OLSModel divides the RSS by n - p (columns) while its
        # degrees of freedom are n - rank(X); for rank-deficient designs
        # (subject columns, p > rank) that overestimates sigma² and shrinks
        # t and F: rescale so that sigma² = RSS / (n - rank), matching the dof.
        if result.df_residuals != n - p:
            result.dispersion = result.dispersion * (n - p) / result.df_residuals
    return labels, results


def _rounding_tolerance(X):
    """Relative size of the float64 rounding left in OLS residuals of ``X``.

    ``max(n, p) · κ · eps``, with ``κ`` the ratio of the largest to the
    smallest singular value that ``numpy.linalg.matrix_rank`` keeps (so that
    rank-deficient designs use their non-zero part): the rounding error of
    a least-squares fit grows with the condition number, and the factor
    ``max(n, p)`` bounds the accumulation over the sums.
    """
    n, p = X.shape
    singular = np.linalg.svd(X, compute_uv=False)
    kept = singular[singular > singular[0] * max(n, p) * EPS]
    return max(n, p) * (kept[0] / kept[-1]) * EPS


def zero_variance_voxels(Y, X):
    """Voxels whose OLS residuals under ``X`` vanish to float precision.

    A voxel is flagged when ``RSS <= n · (tol · scale)²``, i.e. when the
    root-mean-square residual is at most ``tol · scale``, with ``scale``
    the voxel's largest absolute value and ``tol`` the float64 rounding of
    the fit (:func:`_rounding_tolerance`, about 1e-14 for usual designs).
    The inputs are read as float32, so any real difference between maps
    is at least one float32 step (``1.2e-7`` relative): the two scales are
    seven orders of magnitude apart, and a voxel fitted exactly (constant
    across maps, collinear with the design, zero everywhere) is flagged
    while a voxel that differs by one float32 step in one map is not.

    Parameters
    ----------
    Y : numpy.ndarray of shape (n_maps, n_voxels)
    X : numpy.ndarray of shape (n_maps, n_columns)

    Returns
    -------
    numpy.ndarray of bool, shape (n_voxels,)
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    tol = _rounding_tolerance(X)
    projector = np.linalg.pinv(X)
    flags = np.empty(Y.shape[1], dtype=bool)
    for start in range(0, Y.shape[1], VOXELS_PER_CHUNK):
        block = np.asarray(Y[:, start:start + VOXELS_PER_CHUNK], dtype=np.float64)
        residuals = block - X @ (projector @ block)
        rss = np.einsum("ij,ij->j", residuals, residuals)
        scale = np.abs(block).max(axis=0)
        flags[start:start + block.shape[1]] = rss <= n * (tol * scale) ** 2
    return flags


def contrast_maps(labels, results, weights, test):
    """Compute a t- or F-contrast.

    Parameters
    ----------
    labels, results
        From :func:`fit_ols`.
    weights : numpy.ndarray
        Shape (n_columns,) for t, (q, n_columns) for F.
    test : {'t', 'F'}

    Returns
    -------
    ContrastMaps
    """
    contrast = compute_contrast(labels, results, weights, stat_type=test)
    maps = ContrastMaps(
        test=test,
        stat=np.asarray(contrast.stat(), dtype=np.float64).ravel(),
        z=np.asarray(contrast.z_score(), dtype=np.float64).ravel(),
        p=np.asarray(contrast.p_value(), dtype=np.float64).ravel(),
        dof=float(contrast.dof),
        df_num=int(contrast.dim),
    )
    if test == "t":
        maps.effect = np.asarray(contrast.effect_size(), dtype=np.float64).ravel()
        maps.variance = np.asarray(contrast.effect_variance(), dtype=np.float64).ravel()
    return maps
