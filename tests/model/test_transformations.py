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
* Product, Sum, And, Or, Not, Threshold and Orthogonalize of a column with
  n/a: PyBIDS fills the result in there (Product skips the n/a, Sum counts
  it as 0, Not/Threshold make it 1/0) or fails (Orthogonalize); here it is
  n/a, so the map is dropped when the column is in Model.X, and the result
  equals PyBIDS's on the other rows.
* Filter: PyBIDS removes the rows that fail the query from the variable;
  here they become n/a (the maps are dropped when the column is in Model.X).
* Transformations of run timeseries (Convolve, Lag, ToDense, Resample,
  Split, Assign), Power (not in PyBIDS) and Group (PyBIDS cannot take its
  group name from a model document) are refused, naming the node.
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
            # as loaded from a participants.tsv of those subjects (Orthogonalize indexes by position)
            variable.values = variable.values.reset_index(drop=True)
            variable.index = variable.index.reset_index(drop=True)
    TransformerManager().transform(collection, instructions)
    columns = {}
    for name, variable in collection.variables.items():
        values = variable.values  # Orthogonalize leaves a one-column DataFrame
        values = values.iloc[:, 0] if isinstance(values, pd.DataFrame) else values
        columns[name] = pd.Series(values.to_numpy(), index=variable.index["subject"].to_numpy())
    return pd.DataFrame(columns)


def run_ours(table, instructions, subjects=None):
    """The app's result, with the columns PyBIDS holds as variables."""
    if subjects is not None:
        table = table[table["subject"].isin(subjects)]
    out = apply_transformations(table, instructions, entities=["subject"])
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


# --------------------------------------------------------------------------
# The other pybids-transforms-v1 transformations (issue 10)
# --------------------------------------------------------------------------
FACTOR_SITE = step("Factor", ["site"])  # site.A, site.B, site.C: complete 0/1 columns
MORE_SAME = {
    "product": [step("Product", ["dose", "count"], Output="dose_count")],
    "product-output-list": [step("Product", ["dose", "dose"], Output=["dose_squared"])],
    "product-onto-input": [step("Product", ["dose", "count"], Output="dose")],
    "sum": [step("Sum", ["dose", "count"], Output="total")],
    "sum-weights": [step("Sum", ["dose", "count"], Output="total", Weights=[2, -0.5])],
    "threshold": [step("Threshold", ["dose"], Threshold=2)],
    "threshold-default": [step("Demean", "dose"), step("Threshold", "dose")],
    "threshold-binarize": [step("Threshold", ["dose"], Threshold=2, Binarize=True)],
    "threshold-below": [step("Threshold", ["dose"], Threshold=2, Above=False)],
    "threshold-unsigned": [step("Demean", "dose", Output="dose_c"),
                           step("Threshold", ["dose_c"], Threshold=-0.5, Signed=False)],
    "threshold-unsigned-below-binarize": [step("Demean", "dose", Output="dose_c"),
                                          step("Threshold", "dose_c", Threshold=0.5, Signed=False, Above=False, Binarize=True)],
    "threshold-output": [step("Threshold", ["dose"], Threshold=3, Output=["high_dose"])],
    "threshold-per-input": [step("Threshold", ["dose", "count"], Threshold=[2, 5], Binarize=[True, False])],
    "orthogonalize": [step("Factor", "sex"), step("Orthogonalize", ["dose"], Other="sex.M")],
    "orthogonalize-two-others": [FACTOR_SITE, step("Orthogonalize", "dose", Other=["site.B", "site.C"], Output="dose_o")],
    "and": [FACTOR_SITE, step("And", ["site.A", "dose"], Output="a_and_dose")],
    "and-zero": [FACTOR_SITE, step("And", ["site.A", "site.B"], Output="none")],
    "or": [FACTOR_SITE, step("Or", ["site.A", "site.B"], Output="a_or_b")],
    "not": [FACTOR_SITE, step("Not", ["site.A", "site.C"])],
    "not-output": [FACTOR_SITE, step("Not", "site.A", Output="not_a")],
    "filter": [step("Filter", "age", Query="age > 30")],
    "filter-output": [step("Filter", "age", Query="age > 30", Output="older")],
    "filter-categorical": [step("Filter", "site", Query="site != 'A'")],
    "filter-by": [step("Filter", "score", Query="sex == 'F'", By="sex")],
    "filter-by-per-input": [step("Filter", ["score", "age"], Query=["sex == 'F'", "dose > 1"], By=["sex", "dose"])],
    "filter-per-input": [step("Filter", ["age", "score"], Query=["age > 30", "score < 12"])],
    "filter-dotted-name": [FACTOR_SITE, step("Filter", "dose", Query="site.B == 1", By="site.B")],
    "dropna": [step("DropNA", ["age", "group"])],
    "dropna-output": [step("DropNA", "age", Output="age_known")],
    "select": [step("Select", ["score", "age", "site"])],
    "select-after-factor": [FACTOR_SITE, step("Select", ["site.C", "dose"])],
    "delete": [step("Delete", ["sex", "site"])],
    "delete-one": [step("Delete", "count")],
    "scale-per-input": [step("Scale", ["age", "score"], Demean=[True, False], ReplaceNA=[None, "after"])],
    "factor-per-input": [step("Factor", ["sex", "site"], Constraint=["drop_one", "mean_zero"], Sep=["_", "."])],
    "factor-per-input-ref-level": [step("Factor", ["sex", "dose"], Constraint="drop_one", RefLevel=["M", 3])],
    # PyBIDS copies the inputs before writing: age2 is the demeaned original score
    "outputs-onto-later-input": [step("Demean", ["age", "score"], Output=["score", "age2"])],
    "chain": [step("Factor", "sex", Constraint="drop_one"), step("Product", ["sex.M", "dose"], Output="male_dose"),
              step("Scale", "male_dose"), step("Delete", "sex.M")],
}


@pytest.mark.parametrize("instructions", MORE_SAME.values(), ids=MORE_SAME.keys())
def test_more_transformations_same_result_as_pybids(instructions, table, pybids_collection):
    _node(instructions, [1])  # accepted when the model is read
    assert_same(run_ours(table, instructions), run_pybids(pybids_collection, instructions))


# Where PyBIDS skips a missing value (Product as if 1, Sum as if 0, And/Or
# leave it out, Not and Threshold make it 0 or 1), the result here is missing,
# so the map is dropped when the column is in Model.X.
NA_PROPAGATES = {
    "product": ([step("Product", ["age", "score"], Output="p")], "p", ["age", "score"]),
    "sum": ([step("Sum", ["age", "score"], Output="s", Weights=[1, -2])], "s", ["age", "score"]),
    "and": ([step("And", ["age", "score"], Output="a")], "a", ["age", "score"]),
    "or": ([step("Or", ["age", "dose"], Output="o")], "o", ["age"]),
    "not": ([step("Not", "age")], "age", ["age"]),
    "threshold": ([step("Threshold", "score", Threshold=11)], "score", ["score"]),
    "orthogonalize": ([step("Orthogonalize", "score", Other=["age", "dose"])], "score", ["age", "score"]),
}


@pytest.mark.parametrize("instructions, column, inputs", NA_PROPAGATES.values(), ids=NA_PROPAGATES.keys())
def test_missing_values_stay_missing(instructions, column, inputs, table, pybids_collection):
    """Deliberate difference: an n/a input gives an n/a output; elsewhere PyBIDS on the kept rows."""
    ours = run_ours(table, instructions)
    missing = table.set_index("subject")[inputs].isna().any(axis=1)
    assert missing.any()
    assert ours[column].isna().to_numpy().tolist() == missing.to_numpy().tolist()
    kept = list(missing.index[~missing])
    assert_same(ours.loc[kept], run_pybids(pybids_collection, instructions, subjects=kept))
    if instructions[0]["Name"] == "Orthogonalize":
        with pytest.raises(np.linalg.LinAlgError):  # PyBIDS's fit fails on n/a
            run_pybids(pybids_collection, instructions)
    else:
        theirs = run_pybids(pybids_collection, instructions)
        assert theirs[column].notna().all()  # the difference: PyBIDS fills them in


def test_orthogonalized_column_is_uncorrelated_with_the_other(table):
    """Independent check: the result is y minus its OLS fit on [1, other] plus the intercept."""
    out = run_ours(table, [step("Factor", "sex"), step("Orthogonalize", "dose", Other="sex.M", Output="dose_o")])
    male = (table["sex"] == "M").to_numpy(float)
    dose = table["dose"].to_numpy(float)
    slope = np.cov(dose, male)[0, 1] / np.var(male, ddof=1)
    np.testing.assert_allclose(out["dose_o"], dose - slope * male, rtol=1e-12)
    assert abs(np.corrcoef(out["dose_o"], male)[0, 1]) < 1e-12


@pytest.mark.parametrize("instructions, message", [
    ([step("Product", ["site", "dose"], Output="p")], "categorical"),
    ([step("Not", "sex")], "categorical"),
    ([step("Orthogonalize", "dose", Other="sex")], "categorical"),
], ids=["product", "not", "orthogonalize-other"])
def test_categorical_input_refused_as_pybids_does(instructions, message, table, pybids_collection):
    with pytest.raises(ValueError, match=message):
        run_pybids(pybids_collection, instructions)
    with pytest.raises(DataError, match="Factor"):
        run_ours(table, instructions)


@pytest.mark.parametrize("instructions, message", [
    ([step("Filter", "age", Query="height > 3")], "height"),
    ([step("Filter", "age", Query="age >")], "age >"),
    ([step("Select", ["age", "height"])], "height"),
    ([step("Delete", ["height"])], "height"),
    ([step("Delete", ["subject"])], "entity"),
    ([step("Product", ["age", "height"], Output="p")], "height"),
], ids=["filter-unknown-column", "filter-bad-query", "select-unknown", "delete-unknown", "delete-entity", "product-unknown"])
def test_data_errors_name_the_problem(instructions, message, table):
    with pytest.raises(DataError, match=message):
        run_ours(table, instructions)


def test_select_keeps_entities_and_paths(table):
    out = apply_transformations(table, [step("Select", ["score"])], entities=["subject"])
    assert list(out.columns) == ["path", "subject", "score"]


# --------------------------------------------------------------------------
# New columns in Model.X
# --------------------------------------------------------------------------
DESIGNS = {
    "product": ([step("Product", ["age", "score"], Output="age_x_score"), step("Demean", "age_x_score")],
                [1, "age_x_score"], ["03", "06"]),
    "filter": ([step("Filter", "age", Query="age > 30"), step("Scale", "age")], [1, "age"],
               ["01", "03", "05", "09"]),
    "threshold-and-select": ([step("Threshold", "dose", Threshold=2, Binarize=True, Output="high"),
                              step("Select", ["high", "score"])], [1, "high", "score"], ["06"]),
    "orthogonalize-wildcard": ([step("Factor", "site", Constraint="drop_one"),
                                step("Orthogonalize", "dose", Other=["site.B", "site.C"])], [1, "site.*", "dose"], []),
}


@pytest.mark.parametrize("instructions, x, dropped", DESIGNS.values(), ids=DESIGNS.keys())
def test_transformation_outputs_in_model_x(instructions, x, dropped, table, pybids_collection):
    design = build_design(table, _node(instructions, x), entities=["subject"])
    assert sorted(d["subject"] for d in design.dropped) == dropped
    kept = [s for s in table["subject"] if s not in dropped]
    theirs = run_pybids(pybids_collection, instructions, subjects=kept)
    columns = [c for c in design.matrix.columns if c != "intercept"]
    np.testing.assert_allclose(design.matrix[columns].to_numpy(), theirs[columns].to_numpy(float), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# Refusals when the model is read (UsageError: exit 64)
# --------------------------------------------------------------------------
def _named_node(instructions, name="between_subjects"):
    document = {"Name": "m", "BIDSModelVersion": "1.0.0", "Nodes": [{
        "Level": "Dataset", "Name": name,
        "Transformations": {"Transformer": "pybids-transforms-v1", "Instructions": instructions},
        "Model": {"Type": "glm", "X": [1]}, "DummyContrasts": {"Test": "t"},
    }]}
    return parse_model(document)


@pytest.mark.parametrize("name", ["Convolve", "Lag", "ToDense", "Resample", "Split", "Assign"])
def test_run_level_transformation_refused_naming_it_and_the_node(name):
    with pytest.raises(UsageError, match=rf"'between_subjects'.*{name} .*Run-level") as err:
        _named_node([step(name, ["age"])])
    assert err.value.exit_code == 64


@pytest.mark.parametrize("name, reason", [("Power", "Product"), ("Group", "Name")])
def test_transformations_pybids_cannot_run_refused(name, reason):
    with pytest.raises(UsageError, match=rf"{name} is not supported.*{reason}"):
        _named_node([step(name, ["age"])])


def test_unknown_transformation_named_with_the_supported_ones():
    with pytest.raises(UsageError, match=r"'Frobnicate' is not supported; supported: Demean, .*Filter, .*Delete") as err:
        _named_node([step("Frobnicate", ["age"])])
    assert "between_subjects" in str(err.value)


MORE_REFUSED = {
    "product-without-output": (step("Product", ["age", "score"]), "Output"),
    "product-two-outputs": (step("Product", ["age", "score"], Output=["a", "b"]), "Output"),
    "and-without-output": (step("And", ["age", "score"]), "Output"),
    "sum-weights-length": (step("Sum", ["age", "score"], Output="s", Weights=[1]), "Weights"),
    "sum-weights-text": (step("Sum", ["age", "score"], Output="s", Weights=[1, "2"]), "Weights"),
    "sum-weights-scalar": (step("Sum", ["age", "score"], Output="s", Weights=2), "Weights"),
    "threshold-text": (step("Threshold", "age", Threshold="30"), "Threshold"),
    "threshold-binarize-not-bool": (step("Threshold", "age", Binarize=1), "Binarize"),
    "threshold-unknown-key": (step("Threshold", "age", Cutoff=3), "Cutoff"),
    "threshold-per-input-length": (step("Threshold", ["age", "score"], Threshold=[1, 2, 3]), "one value per Input"),
    "scale-per-input-length": (step("Scale", ["age"], Demean=[True, False]), "one value per Input"),
    "orthogonalize-without-other": (step("Orthogonalize", "age"), "Other"),
    "orthogonalize-wildcard-other": (step("Orthogonalize", "age", Other="s*"), "Other"),
    "orthogonalize-groupby": (step("Orthogonalize", "age", Other="dose", GroupBy="sex"), "GroupBy"),
    "filter-without-query": (step("Filter", "age"), "Query"),
    "filter-query-not-string": (step("Filter", "age", Query=3), "Query"),
    "filter-query-wildcard": (step("Filter", "age", Query="age * 2 > 50"), "wildcard"),
    "filter-by-wildcard": (step("Filter", "age", Query="age > 2", By="s*"), "By"),
    # PyBIDS aligns each Input with one By column (a list of two fails in PyBIDS)
    "filter-by-two-for-one-input": (step("Filter", "age", Query="age > 2", By=[["sex", "dose"]]), "By"),
    "select-output": (step("Select", ["age"], Output=["a"]), "Output"),
    "delete-output": (step("Delete", ["age"], Output=["a"]), "Output"),
    "not-unknown-key": (step("Not", "age", Threshold=1), "Threshold"),
    "dropna-output-length": (step("DropNA", ["age", "score"], Output="a"), "Output"),
    "product-output-prefix": (step("Product", ["age", "score"], OutputPrefix="p_"), "OutputPrefix"),
    "replace-attribute-duration": (step("Replace", ["sex"], Replace={"F": 1}, Attribute="duration"), "Attribute"),
}


@pytest.mark.parametrize("instruction, name", MORE_REFUSED.values(), ids=MORE_REFUSED.keys())
def test_more_options_refused_naming_them(instruction, name):
    with pytest.raises(UsageError, match=name):
        _node([instruction], [1])
