"""Combining one subject's runs into subject-level maps, and fixed-effects
contrasts of any level (arrays in, arrays out, no I/O).

Two ways for a Subject (or Session) node, chosen by the model:

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
arrays (any trailing shape works). :func:`fixed_effects_contrast` is the
FEMA contrast of a Dataset node (``Test: "FEMA"`` or ``Model.Type: "meta"``):
fixed effects of the maps each weighed indicator column selects.
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


def t_sf(t, dof):
    """One-sided upper-tail p-value of ``t`` at ``dof`` degrees of freedom (nilearn's convention)."""
    return np.clip(stats.t.sf(np.asarray(t, dtype=float), dof), *_P_CLIP)


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


def fixed_effects_contrast(effects, variances, X, weights, dofs=None):
    """A fixed-effects (FEMA) contrast over indicator columns, as FitLins computes it at any level.

    Each column ``j`` weighed by the contrast selects the maps where
    ``X[:, j] == 1``; those maps are combined by :func:`fixed_effects`
    (equal weights); the contrast is ``sum_j w_j effect_j`` with variance
    ``sum_j w_j**2 variance_j`` and ``sum_j dof_j`` degrees of freedom. With
    one column of weight ``w`` it is ``fixed_effects(...).scaled(w)``.

    Parameters
    ----------
    effects, variances : array of shape (n_maps, ...)
    X : array of shape (n_maps, n_columns)
        0/1 columns; a map is in at most one weighed column.
    weights : array of shape (n_columns,)
    dofs : sequence of float, optional
        Degrees of freedom of each map (default :data:`DEFAULT_RUN_DOF` each).

    Returns
    -------
    SubjectMaps
    """
    effects, variances = _check(effects, variances)
    X = np.asarray(X, dtype=float)
    weights = np.asarray(weights, dtype=float).ravel()
    if X.shape != (effects.shape[0], weights.size):
        raise ValueError(f"design {X.shape} does not match {effects.shape[0]} maps and {weights.size} weights")
    weighed = np.flatnonzero(weights)
    if weighed.size == 0:
        raise ValueError("the contrast has only zero weights")
    if not np.isin(X[:, weighed], (0.0, 1.0)).all() or (X[:, weighed].sum(axis=1) > 1).any():
        raise ValueError("a fixed-effects contrast weighs 0/1 columns, each map in at most one of them")
    effect = np.zeros(effects.shape[1:])
    variance = np.zeros(effects.shape[1:])
    dof = 0.0
    for j in weighed:
        rows = X[:, j] == 1
        if not rows.any():
            raise ValueError(f"column {j} selects no map")
        part = fixed_effects(effects[rows], variances[rows], None if dofs is None else np.asarray(dofs)[rows])
        effect = effect + weights[j] * part.effect
        variance = variance + weights[j] ** 2 * part.variance
        dof += part.dof
    t = effect / np.sqrt(np.maximum(variance, STAT_FLOOR))
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
