"""Tests of the input-indexing stage (real files, real PyBIDS)."""

import json
import math
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_group_app.inputs import index as inputs
from bids_group_app.errors import (
    DataError,
    MissingInputError,
    NoFilesSelectedError,
    OutputError,
    UsageError,
)

DERIVATIVES = ("cat12", "first-level", "fitlins", "nilearn_glm")

NILEARN = "derivatives/nilearn_glm"
FITLINS = "derivatives/fitlins"
SEED004 = "derivatives/first-level"
CAT12 = "derivatives/cat12"


# --------------------------------------------------------------------------
# Fixture helpers
# --------------------------------------------------------------------------
def write_image(path: Path, cls=nib.Nifti1Image):
    """Write a tiny 4x4x4 image (``cls`` decides NIfTI or Analyze)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    nib.save(cls(data, np.eye(4)), str(path))


def write_json(path: Path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def write_description(root: Path, dataset_type="derivative"):
    content = {"Name": root.name, "BIDSVersion": "1.9.0", "DatasetType": dataset_type}
    if dataset_type == "derivative":
        content["GeneratedBy"] = [{"Name": root.name}]
    write_json(root / "dataset_description.json", content)


def make_raw(root: Path, subjects=("01", "02", "03")):
    write_description(root, "raw")
    rows = "".join(f"sub-{s}\t30\n" for s in subjects)
    (root / "participants.tsv").write_text("participant_id\tage\n" + rows)
    for sub in subjects:
        write_image(root / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz")


def make_nilearn(root: Path, subjects=("01", "02")):
    """nilearn save_glm_to_bids first-level outputs, + a ses/run variant."""
    write_description(root)
    for sub in subjects:
        stem = root / f"sub-{sub}/sub-{sub}_task-x"
        for stat in ("effect", "variance"):
            write_image(Path(f"{stem}_contrast-motor_stat-{stat}_statmap.nii.gz"))
        write_image(Path(f"{stem}_mask.nii.gz"))
        Path(f"{stem}_design.tsv").write_text("motor\n1\n")
        write_json(Path(f"{stem}_design.json"), {})
    # two runs of one subject: a collision per subject/contrast
    for run in ("1", "2"):
        write_image(
            root / f"sub-03/ses-1/sub-03_ses-1_task-x_run-{run}_contrast-motor"
            "_stat-effect_statmap.nii.gz"
        )


def make_fitlins(root: Path):
    write_description(root)
    for node in ("subjectLevel", "runLevel"):
        for sub in ("01", "02"):
            write_image(
                root / f"node-{node}/sub-{sub}/sub-{sub}_task-x_contrast-motor"
                "_stat-effect_statmap.nii.gz"
            )
    # group-level output: no subject, no row
    write_image(root / "node-groupLevel/task-x_contrast-motor_stat-t_statmap.nii.gz")


def make_seed004(root: Path):
    write_description(root)
    for sub in ("01", "02"):
        stem = root / f"sub-{sub}/sub-{sub}_ses-mri_task-facerecognition"
        ext = ".nii.gz" if sub == "01" else ".nii"  # uncompressed variant
        write_image(Path(f"{stem}_desc-IniFF_effect{ext}"))
        write_image(Path(f"{stem}_desc-FamFF_effect{ext}"))
        write_image(Path(f"{stem}_desc-EffectsOfInterest_z{ext}"))


def make_cat12(root: Path):
    write_description(root)
    space = "space-MNI152NLin2009cAsym"
    for label in ("GM", "WM"):
        write_image(root / f"sub-01/anat/sub-01_{space}_label-{label}_probseg.nii.gz")
    # Analyze pair (.img + .hdr)
    write_image(
        root / f"sub-02/anat/sub-02_{space}_label-GM_probseg.img", nib.AnalyzeImage
    )


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its mtime and size."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            stat = path.stat()
            state[str(path.relative_to(root))] = (stat.st_mtime_ns, stat.st_size)
    return state


@pytest.fixture(scope="session")
def bids_dir(tmp_path_factory):
    """A raw dataset with the four derivative layouts.

    It lives under folders named ``sub-parent*/desc-old`` so that entity
    leaks from parent folders would show.
    """
    root = tmp_path_factory.mktemp("sub-parent") / "desc-old" / "bids"
    make_raw(root)
    make_nilearn(root / NILEARN)
    make_fitlins(root / FITLINS)
    make_seed004(root / SEED004)
    make_cat12(root / CAT12)
    # a folder without dataset_description.json is not a dataset
    write_image(root / "derivatives/scratch/sub-01/sub-01_bold.nii.gz")
    return root


@pytest.fixture(scope="session")
def table(bids_dir):
    return inputs.index_maps(bids_dir, inputs.resolve_derivatives(bids_dir))


def row(table, relpath, bids_dir):
    """The single row of ``table`` for ``bids_dir/relpath``."""
    rows = table[table["path"] == str(bids_dir / relpath)]
    assert len(rows) == 1, relpath
    return {k: v for k, v in rows.iloc[0].items() if not _isna(v)}


def _isna(value):
    return isinstance(value, float) and math.isnan(value)


def of_dataset(table, name):
    return table[table["dataset"] == name].reset_index(drop=True)


# --------------------------------------------------------------------------
# resolve_derivatives
# --------------------------------------------------------------------------
def test_resolve_default_finds_derivative_datasets(bids_dir):
    roots = inputs.resolve_derivatives(bids_dir)
    assert [r.name for r in roots] == list(DERIVATIVES)
    assert all(r.is_absolute() for r in roots)


def test_resolve_explicit_and_expanded(bids_dir, tmp_path):
    given = [bids_dir / NILEARN, bids_dir / NILEARN]
    assert inputs.resolve_derivatives(bids_dir, given) == [bids_dir / NILEARN]
    expanded = inputs.resolve_derivatives(bids_dir, [bids_dir / "derivatives"])
    assert [r.name for r in expanded] == list(DERIVATIVES)
    with pytest.raises(MissingInputError, match="nope does not exist"):
        inputs.resolve_derivatives(bids_dir, [tmp_path / "nope"])
    (tmp_path / "file").write_text("")
    with pytest.raises(MissingInputError, match="file is not a directory"):
        inputs.resolve_derivatives(bids_dir, [tmp_path / "file"])


def test_resolve_bids_dir_errors(tmp_path):
    with pytest.raises(MissingInputError, match="does not exist") as err:
        inputs.resolve_derivatives(tmp_path / "missing")
    assert err.value.exit_code == 66
    # without dataset_description.json (allowed with --skip-bids-validation,
    # which the workflow checks) BIDS_DIR is taken as raw: derivatives/ is searched
    with pytest.raises(MissingInputError, match="--derivatives"):
        inputs.resolve_derivatives(tmp_path)
    (tmp_path / "dataset_description.json").write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        inputs.resolve_derivatives(tmp_path)


def test_resolve_nothing_found_suggests_option(tmp_path):
    make_raw(tmp_path, subjects=("01",))
    (tmp_path / "derivatives/old").mkdir(parents=True)
    with pytest.raises(MissingInputError) as err:
        inputs.resolve_derivatives(tmp_path)
    message = str(err.value)
    assert "--derivatives" in message and "old" in message
    assert str(tmp_path / "derivatives") in message
    assert "\n" not in message


def test_resolve_bids_dir_that_is_a_derivative(tmp_path):
    write_description(tmp_path, "derivative")
    make_seed004(tmp_path / "derivatives/first-level")
    roots = inputs.resolve_derivatives(tmp_path)
    assert roots == [tmp_path, tmp_path / "derivatives/first-level"]


# --------------------------------------------------------------------------
# index_maps: entities of every layout
# --------------------------------------------------------------------------
def test_index_columns_and_order(table):
    assert list(table.columns[:3]) == ["path", "dataset", "subject"]
    assert list(table["path"]) == sorted(table["path"])
    assert all(Path(p).is_absolute() for p in table["path"])
    assert set(table["dataset"]) == set(DERIVATIVES)
    # no entity leaks from the parent folders sub-parent*/desc-old
    assert not any(s.startswith("parent") for s in table["subject"])
    assert "old" not in set(table["desc"].dropna())
    # only images with a subject: no mask of raw data, json, tsv, group maps
    volume = set(inputs.IMAGE_EXTENSIONS) - set(inputs.SURFACE_EXTENSIONS)
    assert set(table["extension"]) == volume
    assert not table["path"].str.contains("groupLevel|scratch|_T1w").any()


def test_index_nilearn(table, bids_dir):
    got = row(table, f"{NILEARN}/sub-01/sub-01_task-x_contrast-motor"
                     "_stat-effect_statmap.nii.gz", bids_dir)
    assert got == {
        "path": got["path"], "dataset": "nilearn_glm", "subject": "01",
        "task": "x", "contrast": "motor", "stat": "effect",
        "suffix": "statmap", "extension": ".nii.gz",
    }
    got = row(table, f"{NILEARN}/sub-03/ses-1/sub-03_ses-1_task-x_run-2"
                     "_contrast-motor_stat-effect_statmap.nii.gz", bids_dir)
    assert (got["session"], got["run"], got["contrast"]) == ("1", "2", "motor")
    nilearn = of_dataset(table, "nilearn_glm")
    assert sorted(nilearn["stat"].dropna().unique()) == ["effect", "variance"]
    assert len(nilearn) == 2 * 3 + 2  # effect, variance, mask + 2 runs


def test_index_fitlins_node_from_folder(table, bids_dir):
    got = row(table, f"{FITLINS}/node-subjectLevel/sub-02/sub-02_task-x"
                     "_contrast-motor_stat-effect_statmap.nii.gz", bids_dir)
    assert got["node"] == "subjectLevel"
    assert (got["subject"], got["contrast"], got["stat"]) == ("02", "motor", "effect")
    fitlins = of_dataset(table, "fitlins")
    assert sorted(fitlins["node"].unique()) == ["runLevel", "subjectLevel"]
    assert len(fitlins) == 4


def test_index_seed004(table, bids_dir):
    got = row(table, f"{SEED004}/sub-01/sub-01_ses-mri_task-facerecognition"
                     "_desc-IniFF_effect.nii.gz", bids_dir)
    assert got == {
        "path": got["path"], "dataset": "first-level", "subject": "01",
        "session": "mri", "task": "facerecognition", "desc": "IniFF",
        "suffix": "effect", "extension": ".nii.gz",
    }
    got = row(table, f"{SEED004}/sub-02/sub-02_ses-mri_task-facerecognition"
                     "_desc-EffectsOfInterest_z.nii", bids_dir)
    assert (got["suffix"], got["extension"]) == ("z", ".nii")


def test_index_vbm_and_analyze_pair(table, bids_dir):
    space = "space-MNI152NLin2009cAsym"
    got = row(table, f"{CAT12}/sub-01/anat/sub-01_{space}_label-GM_probseg.nii.gz",
              bids_dir)
    assert got == {
        "path": got["path"], "dataset": "cat12", "subject": "01",
        "space": "MNI152NLin2009cAsym", "label": "GM", "suffix": "probseg",
        "datatype": "anat", "extension": ".nii.gz",
    }
    analyze = table[table["path"].str.contains("sub-02_" + space)]
    assert list(analyze["extension"]) == [".img"]  # .hdr is not a row
    assert (bids_dir / CAT12 / "sub-02/anat" /
            f"sub-02_{space}_label-GM_probseg.hdr").is_file()


def test_index_leaves_bids_dir_unchanged(bids_dir, tmp_path):
    before = snapshot(bids_dir)
    inputs.index_maps(bids_dir, None)
    inputs.index_maps(bids_dir, inputs.resolve_derivatives(bids_dir),
                      database_dir=tmp_path / "db")
    assert snapshot(bids_dir) == before


def test_index_database_dir_is_reused(bids_dir, tmp_path):
    deriv = tmp_path / "nilearn_glm"
    shutil.copytree(bids_dir / NILEARN, deriv)
    database = tmp_path / "db"
    first = inputs.index_maps(bids_dir, [deriv], database_dir=database)
    stored = list(database.glob("nilearn_glm-*/layout_index.sqlite"))
    assert len(stored) == 1
    assert [p.name for p in database.iterdir()] == [stored[0].parent.name]
    # a file added afterwards is not seen through the stored index...
    write_image(deriv / "sub-09/sub-09_task-x_contrast-motor_stat-effect_statmap.nii")
    again = inputs.index_maps(bids_dir, [deriv], database_dir=database)
    assert again.equals(first)
    # ...but is without it
    fresh = inputs.index_maps(bids_dir, [deriv])
    assert len(fresh) == len(first) + 1
    assert not list(deriv.rglob("*.sqlite"))


def test_index_nothing_found(bids_dir, tmp_path):
    write_description(tmp_path)
    (tmp_path / "group_mean.nii.gz").write_bytes(b"")
    with pytest.raises(MissingInputError, match=str(tmp_path)):
        inputs.index_maps(bids_dir, [tmp_path])


# --------------------------------------------------------------------------
# default_filters / select_maps
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dataset, expected", [
    ("nilearn_glm", {"stat": ["effect"], "suffix": ["statmap"]}),
    ("fitlins", {"stat": ["effect"], "suffix": ["statmap"]}),
    ("first-level", {"suffix": ["effect"]}),
    ("cat12", {"suffix": ["probseg"], "label": ["GM"]}),
])
def test_default_filters(table, dataset, expected):
    assert inputs.default_filters(of_dataset(table, dataset)) == expected


def test_default_filters_select_the_intended_maps(table):
    seed = of_dataset(table, "first-level")
    chosen = inputs.select_maps(seed, inputs.default_filters(seed))
    assert set(chosen["desc"]) == {"IniFF", "FamFF"}  # no _z distractors
    vbm = of_dataset(table, "cat12")
    chosen = inputs.select_maps(vbm, inputs.default_filters(vbm))
    assert list(chosen["subject"]) == ["01", "02"]
    assert set(chosen["label"]) == {"GM"}


def test_select_value_forms(table):
    nilearn = of_dataset(table, "nilearn_glm")
    chosen = inputs.select_maps(
        nilearn,
        {"subject": ["sub-03"], "extension": ["nii.gz"], "run": ["01"],
         "stat": "effect"},
    )
    assert list(chosen["run"]) == ["1"]
    chosen = inputs.select_maps(
        table, {"dataset": ["nilearn_glm"], "stat": ["effect"]},
        participant_labels=["sub-01", "02"],
    )
    assert sorted(chosen["subject"]) == ["01", "02"]


def test_select_null_and_any(table):
    nilearn = of_dataset(table, "nilearn_glm")
    no_session = inputs.select_maps(nilearn, {"session": [None], "stat": ["effect"]})
    assert sorted(no_session["subject"]) == ["01", "02"]
    with_session = inputs.select_maps(nilearn, {"session": ["*"]})
    assert set(with_session["subject"]) == {"03"}
    # known entity that no map has: null keeps all, a value selects nothing
    cat12 = of_dataset(table, "cat12")
    assert len(inputs.select_maps(cat12, {"echo": None})) == len(cat12)
    with pytest.raises(NoFilesSelectedError, match="no map has the 'echo' entity"):
        inputs.select_maps(cat12, {"echo": ["1"]})


def test_select_unknown_entity(table):
    with pytest.raises(UsageError) as err:
        inputs.select_maps(table, {"contrst": ["motor"]})
    message = str(err.value)
    assert err.value.exit_code == 64
    assert "contrst" in message and "contrast" in message and "subject" in message


def test_select_no_match_lists_values(table):
    with pytest.raises(NoFilesSelectedError) as err:
        inputs.select_maps(table, {"dataset": ["nilearn_glm"], "contrast": ["visual"]})
    message = str(err.value)
    assert err.value.exit_code == 18
    assert "contrast=visual" in message
    assert "motor" in message and "dataset=nilearn_glm" in message
    assert "\n" not in message
    with pytest.raises(NoFilesSelectedError, match="IniFF"):
        inputs.select_maps(table, {"suffix": ["effect"], "desc": ["nope"]})


def test_select_missing_participant_lists_subjects(table):
    with pytest.raises(NoFilesSelectedError) as err:
        inputs.select_maps(of_dataset(table, "fitlins"), {}, ["sub-01", "07"])
    message = str(err.value)
    assert "07" in message and "01, 02" in message
    assert "sub-01" not in message.split(";")[0]


# --------------------------------------------------------------------------
# filter parsing
# --------------------------------------------------------------------------
def test_parse_filter_args():
    assert inputs.parse_filter_args(None) == {}
    parsed = inputs.parse_filter_args(
        ["contrast=motor,visual", "stat=effect", "contrast=visual, faces"]
    )
    assert parsed == {"contrast": ["motor", "visual", "faces"], "stat": ["effect"]}


@pytest.mark.parametrize("bad", ["contrast", "=motor", "contrast=", "contrast=a,,b",
                                 "my entity=x"])
def test_parse_filter_args_bad_syntax(bad):
    with pytest.raises(UsageError, match=r"ENTITY=VALUE\[,VALUE\.\.\.\]"):
        inputs.parse_filter_args([bad])


def test_load_bids_filter_file_flat_and_nested(tmp_path):
    flat = tmp_path / "flat.json"
    write_json(flat, {"task": "x", "run": [1, 2], "session": None})
    assert inputs.load_bids_filter_file(flat) == {
        "task": ["x"], "run": [1, 2], "session": [None]}
    nested = tmp_path / "nested.json"
    write_json(nested, {"bold": {"task": "x", "session": None},
                        "t1w": {"session": None, "task": ["y"]}})
    assert inputs.load_bids_filter_file(nested) == {
        "task": ["x", "y"], "session": [None]}


def test_load_bids_filter_file_errors(tmp_path):
    with pytest.raises(MissingInputError, match="missing.json"):
        inputs.load_bids_filter_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "task": "x",\n}\n')
    with pytest.raises(UsageError, match="line 3 column 1"):
        inputs.load_bids_filter_file(broken)
    shapes = (["task"], {"task": "x", "bold": {"run": 1}},
              {"bold": {"task": {"a": 1}}}, {"task": True})
    for content in shapes:
        path = tmp_path / "shape.json"
        write_json(path, content)
        with pytest.raises(UsageError, match="expected"):
            inputs.load_bids_filter_file(path)


def test_filter_file_null_applies(table, tmp_path):
    path = tmp_path / "filter.json"
    write_json(path, {"bold": {"session": None, "stat": "effect"}})
    chosen = inputs.select_maps(of_dataset(table, "nilearn_glm"),
                                inputs.load_bids_filter_file(path))
    assert chosen["session"].isna().all()
    assert sorted(chosen["subject"]) == ["01", "02"]


# --------------------------------------------------------------------------
# collisions
# --------------------------------------------------------------------------
def test_find_collisions_runs(table, bids_dir):
    nilearn = inputs.select_maps(of_dataset(table, "nilearn_glm"),
                                 {"stat": ["effect"], "suffix": ["statmap"]})
    groups = inputs.find_collisions(nilearn, ["subject", "contrast"])
    run = (f"{NILEARN}/sub-03/ses-1/sub-03_ses-1_task-x_run-{{}}_contrast-motor"
           "_stat-effect_statmap.nii.gz")
    assert groups == [[str(bids_dir / run.format(1)), str(bids_dir / run.format(2))]]
    assert inputs.find_collisions(nilearn, ["subject", "contrast", "run"]) == []


def test_find_collisions_nodes_and_nan(table):
    fitlins = of_dataset(table, "fitlins")
    groups = inputs.find_collisions(fitlins, ["subject", "contrast"])
    assert len(groups) == 2 and all(len(g) == 2 for g in groups)
    assert inputs.find_collisions(fitlins, ["subject", "contrast", "node"]) == []
    # NaN is a value: the two subjects without session collide on it
    nilearn = of_dataset(table, "nilearn_glm")
    effect = nilearn[nilearn["stat"] == "effect"]
    assert len(inputs.find_collisions(effect, ["session"])) == 2


def test_a_folder_named_like_a_map_is_an_error_naming_it(bids_dir, tmp_path):
    deriv = tmp_path / "nilearn_glm"
    shutil.copytree(bids_dir / NILEARN, deriv)
    (map_path,) = deriv.glob("sub-01/sub-01_*contrast-motor*stat-effect_statmap.nii*")
    map_path.unlink()
    map_path.mkdir()
    for database in (None, tmp_path / "db"):
        with pytest.raises(DataError, match=rf"{map_path}.*folder"):
            inputs.index_maps(bids_dir, [deriv], database_dir=database)


def test_folders_pybids_does_not_index_are_not_searched(bids_dir, tmp_path):
    deriv = tmp_path / "nilearn_glm"
    shutil.copytree(bids_dir / NILEARN, deriv)
    for ignored in (".git", "code", "sourcedata"):
        (deriv / ignored / "sub-01_task-x_bold.nii.gz").mkdir(parents=True)
    assert len(inputs.index_maps(bids_dir, [deriv])) == len(inputs.index_maps(bids_dir, [bids_dir / NILEARN]))


def test_database_write_failure_is_an_output_error_naming_the_folder(bids_dir, tmp_path, monkeypatch):
    """A full disk while PyBIDS writes its database: exit 73, no half-written database left."""
    import sqlite3

    real = inputs._build_layout

    def full_disk(root, config, database_path):
        if database_path is not None:
            raise sqlite3.OperationalError("database or disk is full")
        return real(root, config, database_path)

    monkeypatch.setattr(inputs, "_build_layout", full_disk)
    database = tmp_path / "db"
    with pytest.raises(OutputError, match=rf"{database}.*database or disk is full"):
        inputs.index_maps(bids_dir, None, database_dir=database)
    assert list(database.iterdir()) == []
