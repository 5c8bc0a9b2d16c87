"""Data matrix: load the maps of a cell, build the mask, return ``Y``.

Inputs may be ``.nii``/``.nii.gz`` (NIfTI-1 or -2) or Analyze ``.img``, any
dtype; scaling (``scl_slope``/``scl_inter``) is applied by nibabel. NaN
marks voxels outside the brain. A map with no finite value, or zero in every
voxel, holds no data and is refused naming the file (:func:`check_values`).

Grids: every map is brought onto the grid of the first map of the cell.
A map on another grid is resampled to it (continuous interpolation) with a
warning naming the file; maps whose field of view does not overlap end up
outside the mask and are caught there.

Mask: by default the voxels that are finite and non-zero in every map.
``--mask`` (a file, or ``mni152-brain`` / ``mni152-gm`` for the templates
that nilearn ships) is resampled with nearest-neighbour interpolation to the
grid, binarised (non-zero), and intersected with the voxels finite in every
map. Once the design is known, :func:`exclude_zero_variance` removes from
the mask the voxels with no residual variance under it (t and F undefined
there), with a warning and a count in :attr:`DataMatrix.excluded_zero_variance`;
a cell where no voxel is left is a :class:`~bids_group_app.errors.DataError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nilearn.image import resample_img
from nilearn.maskers import NiftiMasker

from bids_group_app.errors import DataError, MissingInputError
from bids_group_app.stats.glm import zero_variance_voxels

LOGGER = logging.getLogger(__name__)
TEMPLATE_MASKS = ("mni152-brain", "mni152-gm")


@dataclass
class DataMatrix:
    """Masked data of one cell.

    Attributes
    ----------
    Y : numpy.ndarray of shape (n_maps, n_voxels)
    masker : nilearn.maskers.NiftiMasker
        Fitted masker (mask, smoothing); ``inverse_transform`` makes images.
    mask_img : nibabel.Nifti1Image
    resampled : list of str
        Inputs that were resampled to the reference grid.
    excluded_zero_variance : int
        Voxels left out of the mask for having no residual variance under
        the design (:func:`exclude_zero_variance`).
    """

    Y: np.ndarray
    masker: NiftiMasker
    mask_img: nib.Nifti1Image
    resampled: list
    excluded_zero_variance: int = 0

    #: What the maps live on (a surface data matrix says ``"gifti"`` or ``"cifti"``).
    kind = "volume"

    def images(self, values):
        """Images of masked values: ``[(hemi, extension, image)]`` (one NIfTI volume, ``hemi`` None)."""
        return [(None, ".nii.gz", self.masker.inverse_transform(values))]

    def mask_images(self):
        """The mask as ``[(hemi, extension, image)]``."""
        return [(None, ".nii.gz", self.mask_img)]

    def transform(self, paths):
        """Other maps (e.g. variances) of the cell's grid, masked and smoothed as ``Y``: ``(n, n_voxels)``."""
        return self.masker.transform(paths)

    def geometry(self, connectivity):
        """The :class:`~bids_group_app.stats.geometry.VolumeGeometry` of the mask."""
        from bids_group_app.stats.geometry import VolumeGeometry

        return VolumeGeometry(np.asarray(self.mask_img.dataobj, dtype=bool), connectivity)

    def without(self, excluded):
        """The same data with the voxels ``excluded`` (bool over the columns of ``Y``) left out of the mask."""
        mask_data = np.asarray(self.mask_img.dataobj) != 0
        mask_data[mask_data] = ~excluded  # the masker's voxel order is the mask's C order
        mask_img = nib.Nifti1Image(mask_data.astype(np.uint8), self.mask_img.affine)
        masker = NiftiMasker(mask_img=mask_img, smoothing_fwhm=self.masker.smoothing_fwhm, standardize=None)
        masker.fit()
        return DataMatrix(Y=self.Y[:, ~excluded], masker=masker, mask_img=mask_img, resampled=self.resampled,
                          excluded_zero_variance=int(excluded.sum()))


def load_map(path):
    """Load one map as float32 3-D data with its affine.

    Raises
    ------
    DataError
        When the file is not a readable image or is not one 3-D volume.
    """
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise DataError(f"{path} is not a readable NIfTI/Analyze image: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path} has shape {data.shape}; each input must be one 3-D map")
    check_affine(img.affine, path)
    check_values(data, path)
    return data, img.affine


def check_values(data, path):
    """Raise DataError when a map holds no data: no finite value, or zero in every voxel.

    Such a map (a failed first-level export) would empty the default mask,
    or enter the model as a subject with no effect anywhere.
    """
    finite = np.isfinite(data)
    if not finite.any():
        raise DataError(f"{path} holds no data: every voxel is NaN or infinite; rerun or leave out that first-level map")
    if not np.any(data[finite]):
        raise DataError(f"{path} holds no data: every voxel is zero (or NaN); rerun or leave out that first-level map")


def check_affine(affine, path):
    """Raise DataError unless ``affine`` maps voxels to space: finite, with an invertible 3x3 part.

    An all-zero or NaN affine (a broken header) has no position in space:
    grids cannot be compared or resampled, nor coordinates reported.
    """
    affine = np.asarray(affine, dtype=float)
    if not np.isfinite(affine).all() or np.linalg.det(affine[:3, :3]) == 0:
        raise DataError(f"{path} has an unusable affine (voxel-to-world matrix with NaN, infinite or all-zero/degenerate axes); fix its header (sform/qform)")


def _same_grid(shape_a, affine_a, shape_b, affine_b):
    return shape_a == shape_b and np.allclose(affine_a, affine_b, atol=1e-3)


def load_maps(paths):
    """Load maps onto the grid of the first one.

    Returns
    -------
    data : numpy.ndarray of shape (n_maps, x, y, z), float32, NaN kept
    affine : numpy.ndarray
    resampled : list of str
    """
    first, affine = load_map(paths[0])
    stack = np.empty((len(paths),) + first.shape, dtype=np.float32)
    stack[0] = first
    resampled = []
    for i, path in enumerate(paths[1:], start=1):
        data, other_affine = load_map(path)
        if not _same_grid(data.shape, other_affine, first.shape, affine):
            LOGGER.warning(
                "%s is on another grid (shape %s, voxel %s mm) than %s (shape %s, voxel %s mm); resampling it to that grid",
                path, data.shape, np.round(nib.affines.voxel_sizes(other_affine), 2), paths[0], first.shape,
                np.round(nib.affines.voxel_sizes(affine), 2),
            )
            img = nib.Nifti1Image(data, other_affine)
            data = resample_img(img, target_affine=affine, target_shape=first.shape, interpolation="continuous",
                                force_resample=True, copy_header=True).get_fdata(dtype=np.float32)
            resampled.append(str(path))
        stack[i] = data
    return stack, affine, resampled


def load_mask(mask, shape, affine):
    """Load ``--mask`` onto the data grid as a boolean array."""
    if mask in TEMPLATE_MASKS:
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_mask

        img = load_mni152_gm_mask() if mask == "mni152-gm" else load_mni152_brain_mask()
    else:
        try:
            img = nib.load(str(mask))
        except FileNotFoundError:
            raise MissingInputError(f"mask {mask} does not exist (give an image file or one of {', '.join(TEMPLATE_MASKS)})") from None
        except Exception as err:
            raise DataError(f"mask {mask} is not a readable image: {err}") from None
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine)
        if len(img.shape) != 3:
            raise DataError(f"mask {mask} has shape {img.shape}; a mask is one 3-D image")
        check_affine(img.affine, f"mask {mask}")
    img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    resampled = resample_img(img, target_affine=affine, target_shape=shape, interpolation="nearest",
                             force_resample=True, copy_header=True)
    return np.asarray(resampled.dataobj) != 0


def build_data_matrix(paths, *, mask=None, smoothing_fwhm=None):
    """Load maps, compute the mask, smooth and mask them.

    Parameters
    ----------
    paths : list of str
    mask : str or None
        Mask file, a template name from :data:`TEMPLATE_MASKS`, or None.
    smoothing_fwhm : float or None
        Gaussian smoothing (mm FWHM) applied by nilearn before masking.

    Returns
    -------
    DataMatrix
    """
    stack, affine, resampled = load_maps(paths)
    finite = np.isfinite(stack).all(axis=0)
    if mask is None:
        mask_data = finite & (stack != 0).all(axis=0)
        where = "finite and non-zero in every map"
    else:
        mask_data = load_mask(mask, stack.shape[1:], affine) & finite
        where = f"in mask {mask} and finite in every map"
    n_voxels = int(mask_data.sum())
    if n_voxels == 0:
        raise DataError(f"no voxel is {where} ({len(paths)} maps); check the inputs' field of view or --mask")
    LOGGER.info("mask: %d voxels %s", n_voxels, where)
    np.nan_to_num(stack, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    mask_img = nib.Nifti1Image(mask_data.astype(np.uint8), affine)
    masker = NiftiMasker(mask_img=mask_img, smoothing_fwhm=smoothing_fwhm, standardize=None)
    masker.fit()
    imgs = nib.Nifti1Image(np.moveaxis(stack, 0, -1), affine)
    Y = masker.transform(imgs)
    return DataMatrix(Y=np.asarray(Y, dtype=np.float64), masker=masker, mask_img=mask_img, resampled=resampled)


def exclude_zero_variance(dm, X, cell):
    """Leave out of the mask the voxels with no residual variance under ``X``.

    Their t and F are 0/0 (:func:`bids_group_app.stats.glm.zero_variance_voxels`);
    without them nothing downstream (maps, thresholds, permutations) sees
    them. Masking commutes with nilearn's smoothing (applied to whole
    images first), so the remaining columns of ``Y`` are what the smaller
    mask gives; when no voxel is excluded ``dm`` is returned unchanged.

    Parameters
    ----------
    dm : DataMatrix
    X : numpy.ndarray of shape (n_maps, n_columns)
        The design matrix of the cell.
    cell : str
        Names the cell in the warning and the error.

    Returns
    -------
    DataMatrix

    Raises
    ------
    DataError
        When no voxel of the mask has residual variance (e.g. every map is
        the same image).
    """
    flat = zero_variance_voxels(dm.Y, X)
    n_flat = int(flat.sum())
    if n_flat == 0:
        return dm
    if n_flat == flat.size:
        raise DataError(f"{cell}: none of the {flat.size} voxels of the mask has residual variance under the design "
                        f"(the {len(dm.Y)} maps are identical, or fitted exactly by the design); nothing to test")
    LOGGER.warning("%s: %d voxels have no residual variance under the design (the same value in every map, or "
                   "fitted exactly by it); they are left out of the mask, as t and F are undefined there",
                   cell, n_flat)
    return dm.without(flat)
