"""Sidecar content: what the JSON files beside the maps and tables say about them."""

from __future__ import annotations

from pathlib import Path

from bids_group_app.inference.atlas import COLUMN_DESCRIPTIONS


def relative_input(path, derivatives, output_dir=None):
    """``bids:<dataset>:<path>`` of an input inside one of the derivative datasets, or
    ``bids::<path>`` (a BIDS URI into this dataset) of one the app wrote in ``output_dir``."""
    if output_dir is not None and Path(path).is_relative_to(output_dir):
        return f"bids::{Path(path).relative_to(output_dir)}"
    for root in derivatives:
        if Path(path).is_relative_to(root):
            return f"bids:{root.name}:{Path(path).relative_to(root)}"
    return str(path)


def design_sidecar(cell, plan_, dm):
    """Fields of a cell's ``design.json``, shared by the sidecars of its maps.

    ``ParticipantsWithoutMaps`` lists the participants.tsv rows with no
    selected map among the subjects the user selected; rows left out by
    ``--participant-label`` or the model's Input ``subject`` are not in it.
    ``RepeatedMeasures`` is there only when a subject's maps enter as
    several rows without subject columns. ``Mask.NumberOfVoxels`` counts the voxels analysed; ``Mask.ExcludedZeroVariance``
    the voxels of the source mask left out for having no residual variance
    under the design.
    """
    design = cell.design
    estimation = cell.settings.estimation
    subjects = design.rows["subject"]
    return {
        "Node": cell.node.name,
        "GroupBy": cell.group_values,
        "Columns": list(design.matrix.columns),
        "Rank": design.rank,
        "DegreesOfFreedom": design.dof,
        "NumberOfMaps": len(design.rows),
        "Subjects": sorted(subjects.dropna().unique()),
        **({"RepeatedMeasures": f"{len(subjects)} maps of {subjects.nunique()} subjects enter as separate rows "
                                "without subject columns, as the model is written; the parametric tests treat "
                                "them as independent"} if design.repeated_subjects else {}),
        "Inputs": [relative_input(p, plan_.derivatives, plan_.output_dir) for p in design.rows["path"]],
        "DroppedSubjects": [
            {"subject": d["subject"], "input": relative_input(d["path"], plan_.derivatives, plan_.output_dir),
             "reason": d["reason"]}
            for d in design.dropped
        ],
        "ParticipantsWithoutMaps": plan_.participants_report.get("without_maps", []),
        "SubjectsWithoutParticipantsRow": plan_.participants_report.get("without_row", []),
        "Mask": {"Source": estimation.mask or f"{'voxels' if dm.kind == 'volume' else 'elements'} finite and non-zero in every map",
                 "NumberOfVoxels" if dm.kind == "volume" else "NumberOfElements": int(dm.Y.shape[1]),
                 "ExcludedZeroVariance": dm.excluded_zero_variance},
        **({"Surface": dm.space.describe()} if dm.kind != "volume" else {}),
        "SmoothingFWHM": estimation.smoothing_fwhm,
        "ResampledInputs": [relative_input(p, plan_.derivatives, plan_.output_dir) for p in dm.resampled],
    }


def contrast_about(contrast, design, maps):
    """Fields of the parametric maps of a contrast.

    ``PValue`` and ``ZScore`` describe the ``stat-p``/``stat-z`` maps; the
    permutation outputs replace them with their own
    (:func:`bids_group_app.inference.nonparametric.describe`).
    """
    return {
        "Contrast": {"Name": contrast.name, "Test": contrast.test,
                     "Weights": contrast.weights.tolist() if contrast.test == "F" else contrast.weights[0].tolist(),
                     "Columns": list(design.matrix.columns)},
        "DegreesOfFreedom": maps.dof,
        **({"NumeratorDegreesOfFreedom": maps.df_num} if contrast.test == "F" else {}),
        "PValue": "one-sided, upper tail of the t/F distribution (nilearn convention)",
        "ZScore": "standard-normal quantile of the one-sided p-value",
    }




def clusters_sidecar(map_sidecar):
    """The sidecar of a cluster table: its columns and how its map was thresholded."""
    return {
        "Description": "Clusters of the thresholded map beside it (every non-zero voxel, connected with the "
                       "map sidecar's Connectivity), their sub-peaks (nilearn's peak search) and anatomical "
                       "labels; X/Y/Z in mm",
        "Columns": COLUMN_DESCRIPTIONS,
        **{k: v for k, v in map_sidecar.items() if k not in ("Inputs", "Subjects")},
    }


def nulldist_sidecar(about, permutation_about):
    """The sidecar of a null-distribution table."""
    return {"Description": "Null distribution of the maximum statistic over the mask, one row per shuffling "
                           "(the unpermuted data excluded)", **about, **permutation_about}
