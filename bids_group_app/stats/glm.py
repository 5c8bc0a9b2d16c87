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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nilearn.glm.contrasts import compute_contrast
from nilearn.glm.first_level import run_glm


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
