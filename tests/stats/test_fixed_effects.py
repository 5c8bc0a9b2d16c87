"""Subject-level combination of runs (issue 10): fixed effects against nilearn's
``compute_fixed_effects``, the OLS over runs against a plain numpy lstsq."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from bids_group_app.stats.fixed_effects import fixed_effects, ols_over_runs, t_to_z


def _runs(seed, n_runs=3, shape=(5, 6, 4)):
    rng = np.random.default_rng(seed)
    effects = rng.normal(0.5, 1.0, (n_runs, *shape))
    effects[:, 0, 0, 0] = 40.0  # a large t: z from the lower tail must stay finite
    effects[:, 0, 0, 1] = -40.0
    variances = rng.uniform(0.05, 2.0, (n_runs, *shape))
    return effects, variances


@pytest.mark.parametrize("n_runs, dofs", [(2, None), (3, None), (4, [50, 60, 70, 80])])
def test_fixed_effects_equal_nilearn_compute_fixed_effects(n_runs, dofs):
    from nilearn.glm import compute_fixed_effects

    effects, variances = _runs(n_runs, n_runs)
    affine = np.eye(4)
    mask = nib.Nifti1Image(np.ones(effects.shape[1:], dtype=np.uint8), affine)
    imgs = [nib.Nifti1Image(e, affine) for e in effects]
    var_imgs = [nib.Nifti1Image(v, affine) for v in variances]
    ref = compute_fixed_effects(imgs, var_imgs, mask, dofs=dofs)
    ref_effect, ref_variance, ref_t, ref_z = (np.asarray(img.dataobj) for img in ref)
    got = fixed_effects(effects, variances, dofs)
    np.testing.assert_allclose(got.effect, ref_effect, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.variance, ref_variance, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.t, ref_t, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.z, ref_z, rtol=1e-6, atol=1e-6)
    assert got.dof == (100 * n_runs if dofs is None else sum(dofs))


def test_ols_over_runs_equals_numpy_lstsq():
    effects, _ = _runs(7, 4)
    effects[:, 0, 0, :2] += [[0.1], [0.2], [-0.3], [0.4]]  # the runs vary everywhere
    Y = effects.reshape(4, -1)
    X = np.ones((4, 1))
    beta, rss, *_ = np.linalg.lstsq(X, Y, rcond=None)
    se2 = rss / (4 - 1) * np.linalg.inv(X.T @ X)[0, 0]
    got = ols_over_runs(effects)
    np.testing.assert_allclose(got.effect.ravel(), beta[0], rtol=1e-10)
    np.testing.assert_allclose(got.variance.ravel(), se2, rtol=1e-10)
    t = beta[0] / np.sqrt(se2)
    np.testing.assert_allclose(got.t.ravel(), t, rtol=1e-10)
    np.testing.assert_allclose(got.z.ravel(), stats.norm.isf(stats.t.sf(t, 3)), rtol=1e-6, atol=1e-6)
    assert got.dof == 3
    with pytest.raises(ValueError, match="at least 2 runs"):
        ols_over_runs(effects[:1])


def test_scaled_contrast_and_t_to_z():
    effects, variances = _runs(3, 2)
    maps = fixed_effects(effects, variances)
    neg = maps.scaled(-2.0)
    np.testing.assert_allclose(neg.effect, -2 * maps.effect)
    np.testing.assert_allclose(neg.variance, 4 * maps.variance)
    np.testing.assert_allclose(neg.t, neg.effect / np.sqrt(neg.variance), rtol=1e-12)
    assert np.isfinite(t_to_z(np.array([-60.0, 0.0, 60.0]), 10)).all()


def test_fixed_effects_contrast_over_indicator_columns():
    """One column: nilearn's fixed effects scaled by the weight; two Factor columns: the difference of each
    level's fixed effects, variances added; covariates and overlapping columns are refused."""
    from bids_group_app.stats.fixed_effects import fixed_effects_contrast

    effects, variances = _runs(11, 6)
    ones = np.ones((6, 1))
    single = fixed_effects_contrast(effects, variances, ones, [-0.5])
    reference = fixed_effects(effects, variances).scaled(-0.5)
    for stat in ("effect", "variance", "t", "z"):
        np.testing.assert_allclose(getattr(single, stat), getattr(reference, stat), rtol=1e-12)
    levels = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=float)
    a, b = (fixed_effects(effects[levels[:, j] == 1], variances[levels[:, j] == 1]) for j in (0, 1))
    got = fixed_effects_contrast(effects, variances, levels, [1, -1])
    np.testing.assert_allclose(got.effect, a.effect - b.effect, rtol=1e-12)
    np.testing.assert_allclose(got.variance, a.variance + b.variance, rtol=1e-12)
    np.testing.assert_allclose(got.z, t_to_z(got.effect / np.sqrt(got.variance), 600), rtol=1e-9, atol=1e-9)
    assert got.dof == 600
    with pytest.raises(ValueError, match="0/1 columns"):
        fixed_effects_contrast(effects, variances, np.c_[ones, np.arange(6.0)], [0, 1])
    with pytest.raises(ValueError, match="0/1 columns"):
        fixed_effects_contrast(effects, variances, np.c_[ones, levels[:, :1]], [1, 1])
