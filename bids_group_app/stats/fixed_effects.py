"""Combining one subject's runs into subject-level maps (arrays in, arrays out, no I/O).

Two ways, chosen by the Subject (or Session) node of the model:

:func:`fixed_effects`
    ``Model.Type: "meta"`` or ``Test: "FEMA"``: the mean of the run effects,
    with variance ``mean(run variances) / n_runs`` (equal weights, as
    ``nilearn.glm.compute_fixed_effects`` with ``precision_weighted=False``,
    which FitLins calls), t = effect / sqrt(variance) and z from t with
    ``sum(dofs)`` degrees of freedom (nilearn's default: 100 per run).
:func:`ols_over_runs`
    ``Model.Type: "glm"`` with ``X: [1]``: an OLS of the run effects on an
    intercept; the variance is the residual variance over ``n_runs - 1``
    degrees of freedom divided by ``n_runs`` (the run variance maps are not
    used).

Both return :class:`SubjectMaps`, and both take ``(n_runs, n_voxels)``
arrays (any trailing shape works).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

#: nilearn's floor on variances (``_compute_fixed_effects_params``).
VARIANCE_FLOOR = 1.0e-16
#: nilearn's floor under the square root of the t statistic (``Contrast.tiny``).
STAT_FLOOR = 1.0e-50
#: Degrees of freedom nilearn assumes per run when none are given.
DEFAULT_RUN_DOF = 100
_P_CLIP = (1.0e-300, 1.0 - 1.0e-16)


@dataclass
class SubjectMaps:
    """Combined maps of one subject (and one contrast).

    Attributes
    ----------
    effect, variance, t, z : numpy.ndarray
    dof : float
        Degrees of freedom of ``t``.
    """

    effect: np.ndarray
    variance: np.ndarray
    t: np.ndarray
    z: np.ndarray
    dof: float

    def as_dict(self):
        """``{stat label: array}`` in the order the maps are written."""
        return {"effect": self.effect, "variance": self.variance, "t": self.t, "z": self.z}

    def scaled(self, weight):
        """The maps of the contrast ``weight * intercept`` (t and z change sign with ``weight``)."""
        sign = float(np.sign(weight))
        return SubjectMaps(self.effect * weight, self.variance * weight ** 2, self.t * sign, self.z * sign, self.dof)


def t_to_z(t, dof):
    """z with the same tail probability as ``t`` at ``dof`` degrees of freedom.

    Uses the upper tail where it is below 0.5 and the lower one elsewhere,
    clipped as nilearn clips them, so large ``|t|`` stay finite.
    """
    t = np.asarray(t, dtype=float)
    p = np.clip(stats.t.sf(t, dof), *_P_CLIP)
    q = np.clip(stats.t.cdf(t, dof), *_P_CLIP)
    z_sf = stats.norm.isf(p)
    return np.where(z_sf < 0, stats.norm.ppf(q), z_sf)


def _check(effects, variances=None):
    effects = np.asarray(effects, dtype=float)
    if effects.ndim < 1 or effects.shape[0] < 1:
        raise ValueError("need at least one run")
    if variances is not None:
        variances = np.asarray(variances, dtype=float)
        if variances.shape != effects.shape:
            raise ValueError(f"effects {effects.shape} and variances {variances.shape} differ in shape")
    return effects, variances


def fixed_effects(effects, variances, dofs=None):
    """Fixed-effects combination of runs (equal weights).

    Parameters
    ----------
    effects, variances : array of shape (n_runs, ...)
    dofs : sequence of float, optional
        Degrees of freedom of each run (default :data:`DEFAULT_RUN_DOF` each).

    Returns
    -------
    SubjectMaps
    """
    effects, variances = _check(effects, variances)
    n = effects.shape[0]
    dofs = [DEFAULT_RUN_DOF] * n if dofs is None else list(dofs)
    if len(dofs) != n:
        raise ValueError(f"{len(dofs)} dofs for {n} runs")
    variance = np.mean(np.maximum(variances, VARIANCE_FLOOR), axis=0) / n
    effect = np.mean(effects, axis=0)
    t = effect / np.sqrt(np.maximum(variance, STAT_FLOOR))
    dof = float(np.sum(dofs))
    return SubjectMaps(effect, variance, t, t_to_z(t, dof), dof)


def ols_over_runs(effects):
    """OLS of the run effects on an intercept (a one-sample model over runs).

    Parameters
    ----------
    effects : array of shape (n_runs, ...), n_runs >= 2

    Returns
    -------
    SubjectMaps
        ``variance`` is the squared standard error of the mean; ``dof`` is
        ``n_runs - 1``; t is 0 where the runs do not vary.
    """
    effects, _ = _check(effects)
    n = effects.shape[0]
    if n < 2:
        raise ValueError("an OLS over runs needs at least 2 runs")
    effect = np.mean(effects, axis=0)
    variance = np.sum((effects - effect) ** 2, axis=0) / (n - 1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(variance > 0, effect / np.sqrt(variance), 0.0)
    dof = float(n - 1)
    return SubjectMaps(effect, variance, t, t_to_z(t, dof), dof)
