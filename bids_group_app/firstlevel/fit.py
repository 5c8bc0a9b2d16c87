"""Fitting run GLMs and combining runs per subject (arrays in, arrays out, no writing).

:func:`masked_data` reads a run's BOLD inside a mask as nilearn's
``FirstLevelModel`` does (``NiftiMasker``; :func:`subject_mask` gives the
voxels inside every run's fMRIPrep brain mask, so that runs can be combined); :func:`fit_run` fits one run
with ``nilearn.glm.first_level.run_glm`` (AR(1) by default) after nilearn's
mean scaling to percent signal change; :func:`run_contrast` gives a run's t
or F contrast (``nilearn.glm.contrasts.compute_contrast``);
:func:`combine_runs` combines one subject's runs by fixed effects exactly as
nilearn's multi-run ``FirstLevelModel.compute_contrast`` does.

nilearn's multi-run combination is **not** precision weighted: it sums the
runs' contrasts and divides by the number of runs, so the effect is the mean
of the run effects, the variance is ``sum(run variances) / n_runs**2`` and
the degrees of freedom add up. For a t contrast this is
:func:`bids_group_app.stats.fixed_effects.fixed_effects` (which FitLins'
``compute_fixed_effects(precision_weighted=False)`` also computes). For an
F contrast nilearn averages the runs' whitened effects
(``sqrtm(inv(c Cov c')) c beta``) and divides their mean squared norm, over
the rank, by the averaged residual variance (it warns "approximate fixed
effects on F statistics"); :func:`combine_runs` does the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from bids_group_app.stats.fixed_effects import fixed_effects

#: nilearn's floor under the denominator of t and F (``Contrast.tiny``).
TINY = 1.0e-50
#: nilearn's clipping of p-values before converting them to z.
P_CLIP = (1.0e-300, 1.0 - 1.0e-16)


@dataclass
class RunFit:
    """A fitted run GLM.

    Attributes
    ----------
    labels : numpy.ndarray
        Per-voxel key into ``results`` (the binned AR(1) coefficient).
    results : dict
        nilearn regression results per label.
    columns : list of str
        Design columns (contrast weights are given over these).
    """

    labels: np.ndarray
    results: dict
    columns: list


@dataclass
class ContrastMaps:
    """A t or F contrast over voxels (of one run, or of runs combined).

    Attributes
    ----------
    effect : numpy.ndarray
        ``(n_voxels,)`` for t; ``(q, n_voxels)`` whitened effects for F.
    variance : numpy.ndarray
        ``(n_voxels,)``: the effect's variance (t) or the residual variance (F).
    stat, p, z : numpy.ndarray
        t or F, its upper-tail p-value and the z with the same p.
    dof : float
    stat_type : {"t", "F"}
    """

    effect: np.ndarray
    variance: np.ndarray
    stat: np.ndarray
    p: np.ndarray
    z: np.ndarray
    dof: float
    stat_type: str

    @property
    def dim(self):
        """Rank of the contrast (1 for t)."""
        return 1 if self.effect.ndim == 1 else self.effect.shape[0]


def masked_data(bold, mask, smoothing_fwhm=None):
    """A run's BOLD time series inside ``mask``, as ``FirstLevelModel`` reads them.

    Parameters
    ----------
    bold, mask : str, pathlib.Path or nibabel image
        A mask on another grid than the BOLD's is the grid the BOLD is
        resampled to (nilearn's ``NiftiMasker``, as ``FirstLevelModel(mask_img=...)``).
    smoothing_fwhm : float, optional
        Gaussian smoothing of each volume (mm FWHM), as ``FirstLevelModel(smoothing_fwhm=...)``.

    Returns
    -------
    numpy.ndarray of shape (n_volumes, n_voxels)
    """
    from nilearn.maskers import NiftiMasker

    return NiftiMasker(mask_img=mask, smoothing_fwhm=smoothing_fwhm or None).fit().transform(bold)


def subject_mask(masks):
    """The voxels inside every run's brain mask (the runs' masks intersected).

    Parameters
    ----------
    masks : list of str, pathlib.Path or nibabel image

    Returns
    -------
    nibabel.Nifti1Image
    """
    from nilearn.masking import intersect_masks

    return intersect_masks([str(m) if not hasattr(m, "affine") else m for m in masks],
                           threshold=1, connected=False)


def fit_run(data, design, *, noise_model="ar1", signal_scaling=True, bins=100):
    """Fit one run's GLM as ``FirstLevelModel`` does.

    Parameters
    ----------
    data : numpy.ndarray of shape (n_volumes, n_voxels)
    design : pandas.DataFrame
        ``n_volumes`` rows (a :class:`~bids_group_app.firstlevel.design.RunDesign` ``matrix``).
    noise_model : {"ar1", "ols"}
    signal_scaling : bool
        Scale each voxel to percent of its mean, minus 100 (nilearn's
        ``signal_scaling=0``, its default).
    bins : int
        AR(1) coefficients are binned to ``1 / bins`` (nilearn's default 100).

    Returns
    -------
    RunFit
    """
    from nilearn.glm.first_level import mean_scaling, run_glm

    data = np.asarray(data)
    if data.shape[0] != len(design):
        raise ValueError(f"{data.shape[0]} volumes but {len(design)} design rows")
    if signal_scaling:
        data, _ = mean_scaling(data, 0)
    labels, results = run_glm(data, design.to_numpy(float), noise_model=noise_model, bins=bins)
    return RunFit(labels, results, list(design.columns))


def _z_from_p(p, one_minus_p):
    """z with upper-tail probability ``p`` (lower tail where that is more precise), as nilearn."""
    p = np.clip(p, *P_CLIP)
    q = np.clip(one_minus_p, *P_CLIP)
    z_sf = stats.norm.isf(p)
    return np.where(z_sf < 0, stats.norm.ppf(q), z_sf)


def _maps(effect, variance, stat, dof, stat_type, dim):
    if stat_type == "t":
        p, q = stats.t.sf(stat, dof), stats.t.cdf(stat, dof)
    else:
        p, q = stats.f.sf(stat, dim, dof), stats.f.cdf(stat, dim, dof)
    return ContrastMaps(effect, variance, stat, p, _z_from_p(p, q), float(dof), stat_type)


def run_contrast(fit, weights, stat_type=None):
    """One run's contrast maps.

    Parameters
    ----------
    fit : RunFit
    weights : array of shape (p,) or (q, p)
        Over ``fit.columns``.
    stat_type : {"t", "F"}, optional
        Default: t for one row, F for several.

    Returns
    -------
    ContrastMaps
    """
    from nilearn.glm.contrasts import compute_contrast

    weights = np.asarray(weights, dtype=float)
    con = compute_contrast(fit.labels, fit.results, weights, stat_type)
    stat = con.stat()
    return _maps(con.effect, con.variance, stat, con.dof, con.stat_type, con.dim)


def combine_runs(contrasts):
    """Fixed-effects combination of one contrast over a subject's runs (nilearn's way).

    Parameters
    ----------
    contrasts : list of ContrastMaps
        The same contrast in each run (same type and rank).

    Returns
    -------
    ContrastMaps
        t: effect = mean of the run effects, variance = mean of the run
        variances / n_runs, t = effect / sqrt(variance) (via
        :func:`~bids_group_app.stats.fixed_effects.fixed_effects`); F: mean
        whitened effects, residual variance = sum / n_runs**2,
        F = |effect|**2 / q / variance; both with the summed degrees of freedom.

    Raises
    ------
    ValueError
        No runs, or runs of different contrast types or ranks.
    """
    if not contrasts:
        raise ValueError("no run contrasts to combine")
    kinds = {(c.stat_type, c.dim) for c in contrasts}
    if len(kinds) != 1:
        raise ValueError(f"run contrasts differ in type or rank: {sorted(kinds)}")
    stat_type, dim = kinds.pop()
    dofs = [c.dof for c in contrasts]
    if stat_type == "t":
        maps = fixed_effects(np.stack([c.effect for c in contrasts]),
                             np.stack([c.variance for c in contrasts]), dofs)
        return _maps(maps.effect, maps.variance, maps.t, maps.dof, "t", 1)
    n = len(contrasts)
    effect = np.mean([c.effect for c in contrasts], axis=0)
    variance = np.sum([c.variance for c in contrasts], axis=0) / n ** 2
    stat = np.sum(effect ** 2, axis=0) / dim / np.maximum(variance, TINY)
    return _maps(effect, variance, stat, float(np.sum(dofs)), "F", dim)


def fit_subject(runs_data, designs, contrasts, **fit_options):
    """Fit each run and return every contrast per run and combined.

    Parameters
    ----------
    runs_data : list of numpy.ndarray
        Each run's ``(n_volumes, n_voxels)`` data (same voxels in every run).
    designs : list of RunDesign
        Same order as ``runs_data``.
    contrasts : list of dict
        ``name``, ``weights`` (list of {column: weight} rows) and ``test``,
        as :attr:`RunDesign.contrasts`.
    **fit_options
        Passed to :func:`fit_run`.

    Returns
    -------
    dict
        ``{name: {"runs": [ContrastMaps per run], "subject": ContrastMaps}}``.
    """
    if len(runs_data) != len(designs):
        raise ValueError(f"{len(runs_data)} runs of data but {len(designs)} designs")
    fits = [fit_run(data, design.matrix, **fit_options) for data, design in zip(runs_data, designs)]
    out = {}
    for con in contrasts:
        per_run = [run_contrast(fit, design.contrast_matrix(con["weights"]), con["test"])
                   for fit, design in zip(fits, designs)]
        out[con["name"]] = {"runs": per_run, "subject": combine_runs(per_run)}
    return out
