"""Loading maps of every supported format, grids, and the mask rules."""

import logging

import nibabel as nib
import numpy as np
import pytest

from bids_group_app.inputs.data_matrix import build_data_matrix, load_map
from bids_group_app.errors import DataError, MissingInputError

AFFINE = np.diag([-4.0, 4.0, 4.0, 1.0])
AFFINE[:3, 3] = [20, -20, -20]


def _volume(seed, shape=(10, 10, 10)):
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32) + 5
    data[:2] = 0  # a background slab
    return data


def _write(path, data, kind="nifti1"):
    if kind == "nifti1":
        img = nib.Nifti1Image(data, AFFINE)
    elif kind == "nifti2":
        img = nib.Nifti2Image(data, AFFINE)
    elif kind == "analyze":
        img = nib.AnalyzeImage(data, AFFINE)
    elif kind == "int16":
        img = nib.Nifti1Image(np.round(data * 1000).astype(np.int16), AFFINE)
        img.header.set_slope_inter(0.001, 0.0)
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("kind, name", [
    ("nifti1", "m.nii"), ("nifti1", "m.nii.gz"), ("nifti2", "m.nii.gz"), ("analyze", "m.img"), ("int16", "m.nii.gz"),
])
def test_load_map_reads_every_format_with_scaling(tmp_path, kind, name):
    data = _volume(0)
    path = _write(tmp_path / name, data, kind)
    loaded, affine = load_map(path)
    assert loaded.dtype == np.float32 and loaded.shape == data.shape
    np.testing.assert_allclose(loaded, data, atol=1e-3 if kind == "int16" else 1e-6)
    if kind == "analyze":  # Analyze stores voxel sizes and origin, not the orientation
        np.testing.assert_allclose(np.abs(np.diag(affine)), np.abs(np.diag(AFFINE)))
    else:
        np.testing.assert_allclose(affine, AFFINE)


def test_load_map_accepts_a_single_volume_4d_and_rejects_a_series(tmp_path):
    data = _volume(1)
    one = _write(tmp_path / "one.nii.gz", data[..., None])
    assert load_map(one)[0].shape == data.shape
    series = _write(tmp_path / "series.nii.gz", np.stack([data, data], axis=-1))
    with pytest.raises(DataError, match="one 3-D map"):
        load_map(series)


def test_load_map_rejects_a_corrupt_file_naming_it(tmp_path):
    good = _write(tmp_path / "g.nii.gz", _volume(2))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="bad.nii.gz is not a readable"):
        load_map(bad)


def test_default_mask_is_finite_and_nonzero_in_every_map(tmp_path):
    a, b = _volume(3), _volume(4)
    b[5, 5, 5] = np.nan
    b[6, 6, 6] = 0.0
    paths = [str(_write(tmp_path / f"{i}.nii.gz", d)) for i, d in enumerate((a, b))]
    dm = build_data_matrix(paths)
    mask = np.asarray(dm.mask_img.dataobj).astype(bool)
    expected = np.isfinite(a) & np.isfinite(b) & (a != 0) & (b != 0)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_allclose(dm.Y, np.stack([a[expected], b[expected]]), atol=1e-6)


def test_user_mask_is_resampled_nearest_and_intersected_with_finite(tmp_path):
    a, b = _volume(5), _volume(6)
    b[5, 5, 5] = np.nan
    paths = [str(_write(tmp_path / f"{i}.nii.gz", d)) for i, d in enumerate((a, b))]
    # the same box at half the voxel size
    fine_affine = AFFINE.copy()
    fine_affine[:3, :3] /= 2
    fine = np.zeros((20, 20, 20), dtype=np.uint8)
    fine[8:14, 8:14, 8:14] = 1
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(fine, fine_affine), str(mask_path))
    dm = build_data_matrix(paths, mask=str(mask_path))
    mask = np.asarray(dm.mask_img.dataobj).astype(bool)
    assert mask.sum() > 0 and not mask[5, 5, 5]
    assert mask[4:7, 4:7, 4:7].sum() == 26  # the 3x3x3 cube minus the NaN voxel
    assert mask.sum() == 26


def test_missing_mask_file_and_empty_mask(tmp_path):
    paths = [str(_write(tmp_path / f"{i}.nii.gz", _volume(i))) for i in range(2)]
    with pytest.raises(MissingInputError, match="does not exist"):
        build_data_matrix(paths, mask=str(tmp_path / "nope.nii.gz"))
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), AFFINE), str(empty))
    with pytest.raises(DataError, match="no voxel is in mask"):
        build_data_matrix(paths, mask=str(empty))


def test_map_on_another_grid_is_resampled_with_a_warning(tmp_path, caplog):
    a = _volume(7)
    coarse = nib.Nifti1Image(a, AFFINE)
    fine_affine = AFFINE.copy()
    fine_affine[:3, :3] /= 2
    from nilearn.image import resample_img

    fine = resample_img(coarse, target_affine=fine_affine, target_shape=(20, 20, 20),
                        interpolation="nearest", force_resample=True, copy_header=True)
    p0 = _write(tmp_path / "a.nii.gz", a)
    p1 = tmp_path / "b.nii.gz"
    nib.save(fine, str(p1))
    with caplog.at_level(logging.WARNING):
        dm = build_data_matrix([str(p0), str(p1)])
    assert dm.resampled == [str(p1)]
    assert "b.nii.gz is on another grid" in caplog.text
    assert dm.Y.shape[0] == 2


@pytest.mark.parametrize("value, words", [(np.nan, "NaN"), (np.inf, "NaN or infinite"), (0.0, "zero")])
def test_load_map_rejects_a_map_with_no_value_naming_it(tmp_path, value, words):
    empty = _write(tmp_path / "empty.nii.gz", np.full((6, 6, 6), value, dtype=np.float32))
    with pytest.raises(DataError, match=rf"empty\.nii\.gz.*{words}"):
        load_map(empty)


def test_load_map_accepts_zeros_and_nans_around_values(tmp_path):
    data = np.zeros((6, 6, 6), dtype=np.float32)
    data[:3] = np.nan
    data[4, 4, 4] = 1.0
    assert load_map(_write(tmp_path / "sparse.nii.gz", data))[0][4, 4, 4] == 1.0
