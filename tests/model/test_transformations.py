"""Transformations against PyBIDS's own (``bids.modeling.transformations``).

A model file must give the same design here and in FitLins, which applies
the transformations with PyBIDS. Each supported option is run on the same
participants.tsv by both: PyBIDS loads it with ``BIDSLayout`` (its own TSV
reader, its own ``SimpleVariable`` per column, as FitLins does at the
Dataset level) and applies the JSON instructions with its
``TransformerManager``; the app reads it with ``read_participants`` and
applies :func:`apply_transformations`. Column names, their order and their
values must be equal.

Deliberate differences, each tested here and stated in the README:

* Missing values. PyBIDS keeps ``n/a`` as NaN (its Factor fails on a
  column with ``n/a``); the app drops the maps whose model variables are
  ``n/a`` and re-applies the transformations to the maps that remain, so
  means, SDs and factor levels are those of the maps in the model. The design
  equals PyBIDS's on the table without the dropped subjects.
* Options whose PyBIDS result cannot be what a model means are refused
  (UsageError/DataError) rather than reproduced: a Replace key that names a
  missing value (``n/a``: PyBIDS compares it with NaN and replaces nothing),
  a Replace on a numeric column (JSON keys are strings, PyBIDS compares them
  with numbers and replaces nothing), Factor with an ``Output`` (PyBIDS
  renames only the first level's column).
* A Replace whose new values are all numbers gives a numeric column here;
  PyBIDS keeps it as an object column, which its Demean/Scale refuse.
* Numeric factor levels are labelled as whole numbers when every value is
  whole (``dose.1``), and every level as a float (``dose.0.0``, ``dose.0.5``,
  ``dose.1.0``) when any is not, as PyBIDS does.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bids import BIDSLayout
from bids.modeling.transformations import TransformerManager
from bids.variables.collections import BIDSVariableCollection

from bids_group_app.errors import DataError, UsageError
from bids_group_app.inputs.participants import read_participants
from bids_group_app.model.design import build_design
from bids_group_app.model.spec import SUPPORTED_TRANSFORMS, parse_model
from bids_group_app.model.transformations import OPTIONS, apply_transformations

# age and score have n/a; site has 3 levels, group 3 levels with an n/a;
# dose is numeric with whole values; sex has 2 levels.
PARTICIPANTS = """\
participant_id\tage\tsex\tsite\tgroup\tdose\tscore\tcount
sub-01\t21\tF\tB\tpatient\t2\t10.5\t4
sub-02\t34.5\tM\tA\tcontrol\t1\t12\t4
sub-03\tn/a\tF\tC\tpatient\t3\t9\t4
sub-04\t45\tM\tB\tsibling\t1\t14.25\t4
sub-05\t29\tF\tA\tn/a\t2\t11\t4
sub-06\t52\tM\tC\tcontrol\t3\tn/a\t4
sub-07\t38\tF\tB\tsibling\t2\t13\t4
sub-08\t41\tM\tA\tpatient\t1\t8.5\t4
sub-09\t27\tF\tC\tcontrol\t3\t10\t4
sub-10\t60\tM\tC\tsibling\t2\t12.5\t4
"""
COLUMNS = PARTICIPANTS.splitlines()[0].split("\t")[1:]
COMPLETE = ["01", "02", "04", "07", "08", "09", "10"]  # subjects without any n/a


# --------------------------------------------------------------------------
# The two sides
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A BIDS folder holding only participants.tsv (and its description)."""
    root = tmp_path_factory.mktemp("transformations") / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    (root / "participants.tsv").write_text(PARTICIPANTS)
    return root


@pytest.fixture(scope="module")
def pybids_collection(dataset):
    """PyBIDS's Dataset-level collection of participants.tsv, in file column order.

    PyBIDS orders the variables of a TSV as a set; they are put back in
    file order so that the order of the columns can be compared.
    """
    [collection] = BIDSLayout(dataset, validate=False).get_collections("dataset")
    return BIDSVariableCollection([collection.variables[c] for c in COLUMNS])


@pytest.fixture(scope="module")
def table(dataset):
    """The app's cell table: one row per map, entities and participants columns."""
    participants = read_participants(dataset).rename_axis("subject").reset_index()
    participants.insert(0, "path", [f"sub-{s}_stat-effect_statmap.nii.gz" for s in participants["subject"]])
    return participants


def run_pybids(collection, instructions, subjects=None):
    """PyBIDS's result as a DataFrame (variables in collection order, rows by subject)."""
    collection = collection.clone()
    if subjects is not None:
        for variable in collection.variables.values():
            variable.select_rows(variable.index["subject"].isin(subjects).to_numpy())
    TransformerManager().transform(collection, instructions)
    columns = {}
    for name, variable in collection.variables.items():
        columns[name] = pd.Series(variable.values.to_numpy(), index=variable.index["subject"].to_numpy())
    return pd.DataFrame(columns)


def run_ours(table, instructions, subjects=None):
    """The app's result, with the columns PyBIDS holds as variables."""
    if subjects is not None:
        table = table[table["subject"].isin(subjects)]
    out = apply_transformations(table, instructions)
    return out.drop(columns=["path", "subject"]).set_index(out["subject"].to_numpy())


def assert_same(ours, theirs):
    """Same column names in the same order, same values (NaN where PyBIDS has NaN)."""
    assert list(ours.columns) == list(theirs.columns)
    assert list(ours.index) == list(theirs.index)
    for column in theirs.columns:
        mine, other = ours[column], theirs[column]
        if pd.api.types.is_numeric_dtype(mine) and pd.to_numeric(other, errors="coerce").notna().sum() == other.notna().sum():
            np.testing.assert_allclose(mine.to_numpy(float), pd.to_numeric(other).to_numpy(float),
                                       rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=column)
        else:
            assert [None if pd.isna(v) else v for v in mine] == [None if pd.isna(v) else v for v in other], column


def step(name, inputs, **options):
    return {"Name": name, "Input": inputs, **options}


# --------------------------------------------------------------------------
# Same table, same result
# --------------------------------------------------------------------------
SAME = {
    "demean": [step("Demean", ["age", "score"])],
    "demean-output": [step("Demean", ["age"], Output=["age_c"])],
    "scale": [step("Scale", ["age", "score"])],
    "scale-output": [step("Scale", "age", Output="age_z")],
    "scale-no-demean": [step("Scale", ["age"], Demean=False)],
    "scale-no-rescale": [step("Scale", ["score"], Rescale=False)],
    "scale-neither": [step("Scale", ["score"], Demean=False, Rescale=False)],
    "scale-replace-na-before": [step("Scale", ["age", "score"], ReplaceNA="before")],
    "scale-replace-na-after": [step("Scale", ["age", "score"], ReplaceNA="after")],
    "scale-constant-replace-na-after": [step("Scale", ["count"], ReplaceNA="after")],
    "factor": [step("Factor", ["site"])],
    "factor-two": [step("Factor", ["sex", "site"])],
    "factor-drop-one": [step("Factor", ["site"], Constraint="drop_one")],
    "factor-mean-zero-2": [step("Factor", ["sex"], Constraint="mean_zero")],
    "factor-mean-zero-3": [step("Factor", ["site"], Constraint="mean_zero")],
    "factor-mean-zero-numeric": [step("Factor", ["dose"], Constraint="mean_zero")],
    "factor-numeric": [step("Factor", "dose")],
    "factor-ref-level-drop-one": [step("Factor", ["site"], Constraint="drop_one", RefLevel="B")],
    "factor-ref-level-mean-zero": [step("Factor", ["site"], Constraint="mean_zero", RefLevel="C")],
    "factor-ref-level-numeric": [step("Factor", ["dose"], Constraint="drop_one", RefLevel=3)],
    # PyBIDS leaves the reference level out with Constraint none too
    "factor-ref-level-none": [step("Factor", ["site"], RefLevel="A")],
    "factor-sep": [step("Factor", ["site"], Constraint="drop_one", Sep="_")],
    "replace": [step("Replace", ["sex"], Replace={"F": -1, "M": 1})],
    "replace-output": [step("Replace", ["sex"], Output=["sex_pm"], Replace={"F": -1, "M": 1})],
    "replace-partial": [step("Replace", ["site"], Replace={"A": "north"})],
    "replace-attribute-value": [step("Replace", ["site"], Replace={"A": "B"}, Attribute="value")],
    "rename": [step("Rename", ["age", "sex"], Output=["years", "gender"])],
    "copy": [step("Copy", ["age", "site"], Output=["age2", "site2"])],
    "chain-factor-rename": [step("Factor", ["sex"], Constraint="drop_one"), step("Rename", "sex.M", Output="male")],
    "chain-copy-factor-demean": [step("Copy", "site", Output="site_f"),
                                 step("Factor", "site_f", Constraint="mean_zero"),
                                 step("Demean", ["site_f.B", "site_f.C"])],
    "chain-output-onto-existing": [step("Demean", "score", Output="age")],
}


@pytest.mark.parametrize("instructions", SAME.values(), ids=SAME.keys())
def test_same_result_as_pybids(instructions, table, pybids_collection):
    assert_same(run_ours(table, instructions), run_pybids(pybids_collection, instructions))


FACTOR_WITH_NA = {
    "factor-na": [step("Factor", ["group"])],
    "factor-na-drop-one": [step("Factor", ["group"], Constraint="drop_one")],
    "factor-na-mean-zero": [step("Factor", ["group"], Constraint="mean_zero", RefLevel="control")],
}


@pytest.mark.parametrize("instructions", FACTOR_WITH_NA.values(), ids=FACTOR_WITH_NA.keys())
def test_factor_of_a_column_with_na(instructions, table, pybids_collection):
    """PyBIDS's Factor fails on n/a; ours leaves those rows NaN (the maps are then dropped).

    On the rows that have a value ours equals PyBIDS run without the n/a rows.
    """
    with pytest.raises((TypeError, KeyError)):
        run_pybids(pybids_collection, instructions)
    kept = [s for s in table["subject"] if s != "05"]
    ours = run_ours(table, instructions)
    levels = [c for c in ours.columns if c.startswith("group.")]
    assert ours.loc["05", levels].isna().all()
    assert_same(ours.loc[kept], run_pybids(pybids_collection, instructions, subjects=kept))


SINGLE_LEVEL = {
    "none": step("Factor", ["sex"]),
    "drop-one": step("Factor", ["sex"], Constraint="drop_one"),
    "mean-zero": step("Factor", ["sex"], Constraint="mean_zero"),
    "ref-level": step("Factor", ["sex"], Constraint="drop_one", RefLevel="F"),  # no column left
}


@pytest.mark.parametrize("instruction", SINGLE_LEVEL.values(), ids=SINGLE_LEVEL.keys())
def test_factor_with_a_single_level(instruction, table, pybids_collection):
    women = ["01", "03", "05"]
    assert_same(run_ours(table, [instruction], women), run_pybids(pybids_collection, [instruction], women))


def test_mean_zero_codes_the_reference_level_as_minus_one_over_levels_minus_one(table):
    """Effect coding: the reference rows hold -1/(k-1) in every kept column."""
    out = run_ours(table, [step("Factor", ["site"], Constraint="mean_zero")])
    assert list(out.columns[-2:]) == ["site.B", "site.C"]
    reference = table.set_index("subject")["site"] == "A"
    np.testing.assert_array_equal(out.loc[reference.to_numpy(), ["site.B", "site.C"]].to_numpy(), -0.5)
    site = table["site"]
    expected = [(site == level).sum() - 0.5 * reference.sum() for level in ("B", "C")]
    np.testing.assert_allclose(out[["site.B", "site.C"]].sum(axis=0), expected)


def test_constant_column_cannot_be_scaled(table, pybids_collection):
    instructions = [step("Scale", ["count"])]
    with pytest.raises(ValueError, match="constant"):
        run_pybids(pybids_collection, instructions)
    with pytest.raises(DataError, match="constant"):
        run_ours(table, instructions)


def test_replace_on_a_numeric_column_is_refused(table, pybids_collection):
    """JSON keys are strings: PyBIDS compares them with numbers and replaces nothing."""
    instructions = [step("Replace", ["dose"], Replace={"1": 10})]
    theirs = run_pybids(pybids_collection, instructions)
    np.testing.assert_array_equal(theirs["dose"].to_numpy(float), table["dose"].to_numpy(float))
    with pytest.raises(DataError, match="numeric"):
        run_ours(table, instructions)


def test_numeric_transformation_of_a_replaced_column(table, pybids_collection):
    """Deliberate difference: PyBIDS keeps Replace's output as an object column and refuses to
    Scale it ("categorical"); here a column whose values all became numbers is numeric."""
    instructions = [step("Replace", "sex", Replace={"F": 0, "M": 1}), step("Scale", "sex")]
    with pytest.raises(ValueError, match="categorical"):
        run_pybids(pybids_collection, instructions)
    male = (table["sex"] == "M").to_numpy(float)
    np.testing.assert_allclose(run_ours(table, instructions)["sex"], (male - male.mean()) / male.std(ddof=1))


def test_factor_numeric_levels_with_fractions(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    (root / "participants.tsv").write_text("participant_id\tdose\nsub-01\t0\nsub-02\t0.5\nsub-03\t1\n")
    [collection] = BIDSLayout(root, validate=False).get_collections("dataset")
    ours = read_participants(root).rename_axis("subject").reset_index()
    ours.insert(0, "path", "x")
    instructions = [step("Factor", ["dose"])]
    assert_same(run_ours(ours, instructions), run_pybids(collection, instructions))


# --------------------------------------------------------------------------
# The whole design: n/a subjects dropped, statistics over those kept
# --------------------------------------------------------------------------
def _node(instructions, x):
    document = {"Name": "m", "BIDSModelVersion": "1.0.0", "Nodes": [{
        "Level": "Dataset", "Name": "m",
        "Transformations": {"Transformer": "pybids-transforms-v1", "Instructions": instructions},
        "Model": {"Type": "glm", "X": x}, "DummyContrasts": {"Test": "t"},
    }]}
    return parse_model(document).nodes[0]


def test_design_equals_pybids_on_the_subjects_kept(table, pybids_collection):
    """Deliberate difference: n/a subjects are dropped, then transformations re-applied."""
    instructions = [step("Factor", ["group"], Constraint="mean_zero", RefLevel="control"),
                    step("Scale", ["age"]), step("Demean", ["score"])]
    x = [1, "age", "score", "group.patient", "group.sibling"]
    design = build_design(table, _node(instructions, x), entities=["subject"])
    assert sorted(d["subject"] for d in design.dropped) == ["03", "05", "06"]
    assert list(design.rows["subject"]) == COMPLETE
    theirs = run_pybids(pybids_collection, instructions, subjects=COMPLETE)
    expected = theirs[x[1:]].astype(float).reset_index(drop=True)
    expected.insert(0, "intercept", 1.0)
    assert list(design.matrix.columns) == list(expected.columns)
    np.testing.assert_allclose(design.matrix.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-12)


def test_replace_na_keeps_the_subjects(table, pybids_collection):
    instructions = [step("Scale", ["score"], ReplaceNA="before")]
    design = build_design(table, _node(instructions, [1, "score"]), entities=["subject"])
    assert design.dropped == []
    theirs = run_pybids(pybids_collection, instructions)
    np.testing.assert_allclose(design.matrix["score"], theirs["score"].to_numpy(float))


# --------------------------------------------------------------------------
# Options: accepted ones listed, the others refused by name
# --------------------------------------------------------------------------
REFUSED = {
    "demean-rescale": (step("Demean", ["age"], Rescale=False), "Rescale"),
    "scale-groupby": (step("Scale", ["age"], GroupBy=["sex"]), "GroupBy"),
    "scale-output-prefix": (step("Scale", ["age"], OutputPrefix="z_"), "OutputPrefix"),
    "scale-dense": (step("Scale", ["age"], Dense=True), "Dense"),
    "scale-snake-case": (step("Scale", ["age"], replace_na="before"), "replace_na"),
    "scale-replace-na-value": (step("Scale", ["age"], ReplaceNA="during"), "ReplaceNA"),
    "scale-demean-not-bool": (step("Scale", ["age"], Demean="no"), "Demean"),
    "factor-output": (step("Factor", ["sex"], Output=["s"]), "Output"),
    "factor-constraint": (step("Factor", ["sex"], Constraint="sum"), "Constraint"),
    "factor-sep-not-string": (step("Factor", ["sex"], Sep=1), "Sep"),
    "replace-na-key": (step("Replace", ["score"], Replace={"n/a": 100}), "n/a"),
    "replace-empty-key": (step("Replace", ["score"], Replace={"": 0}), "missing"),
    "replace-attribute-onset": (step("Replace", ["sex"], Replace={"F": 1}, Attribute="onset"), "Attribute"),
    "replace-without-mapping": (step("Replace", ["sex"]), "Replace"),
    "rename-without-output": (step("Rename", ["age"]), "Output"),
    "copy-without-output": (step("Copy", ["age"]), "Output"),
    "output-length": (step("Copy", ["age", "sex"], Output=["a"]), "Output"),
    "input-wildcard": (step("Demean", ["sc*"]), "wildcard"),
    "input-empty": (step("Demean", []), "Input"),
}


@pytest.mark.parametrize("instruction, name", REFUSED.values(), ids=REFUSED.keys())
def test_unsupported_option_is_a_usage_error_naming_it(instruction, name):
    with pytest.raises(UsageError, match=name):
        _node([instruction], [1])


def test_options_cover_the_supported_transformations():
    assert sorted(OPTIONS) == sorted(SUPPORTED_TRANSFORMS)
