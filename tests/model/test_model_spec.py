"""Model-spec parsing: BIDS Stats Models validation and the --contrast grammar."""

import numpy as np
import pytest

from bids_group_app.errors import UsageError
from bids_group_app.model.spec import (
    contrast_from_option,
    parse_expression,
    parse_model,
    resolve_option_contrast,
)


def _model(**node):
    base = {"Level": "Dataset", "Name": "group", "Model": {"Type": "glm", "X": [1]}, "DummyContrasts": {"Test": "t"}}
    base.update(node)
    return {"Name": "m", "BIDSModelVersion": "1.0.0", "Nodes": [base]}


def test_expression_with_dotted_hyphenated_names_and_fractions():
    assert parse_expression("group.patient - group.control") == {"group.patient": 1.0, "group.control": -1.0}
    assert parse_expression("1/2*IniFF + 0.5 ImmFF - 2*sub-01") == {"IniFF": 0.5, "ImmFF": 0.5, "sub-01": -2.0}
    assert parse_expression("a + a") == {"a": 2.0}
    assert parse_expression("a b") is None
    assert parse_expression("") is None


def test_contrast_option_weights_are_zero_padded_in_column_order():
    spec = contrast_from_option("fs=1/6,1/6,-1/3")
    resolved = resolve_option_contrast(spec, ["A", "B", "C", "D"])
    np.testing.assert_allclose(resolved["Weights"], [1 / 6, 1 / 6, -1 / 3, 0])
    assert resolved["Test"] == "t" and resolved["ConditionList"] == ["A", "B", "C", "D"]


def test_contrast_option_rows_make_an_f_test():
    spec = contrast_from_option("inter=A-B;B-C")
    resolved = resolve_option_contrast(spec, ["A", "B", "C"])
    assert resolved["Test"] == "F"
    np.testing.assert_allclose(resolved["Weights"], [[1, -1, 0], [0, 1, -1]])
    single_f = resolve_option_contrast(contrast_from_option("eoi=F:1,0,0"), ["A", "B", "C"])
    assert single_f["Test"] == "F" and np.asarray(single_f["Weights"]).shape == (1, 3)


@pytest.mark.parametrize("text, fragment", [
    ("noequals", "expected NAME=SPEC"),
    ("x=t:1,0;0,1", "a t-test takes one row"),
    ("x=a b c", "neither comma-separated weights"),
])
def test_contrast_option_syntax_errors(text, fragment):
    with pytest.raises(UsageError, match=fragment):
        contrast_from_option(text)


def test_contrast_option_unknown_column_and_too_many_weights():
    with pytest.raises(UsageError, match="unknown design column.*columns are A, B"):
        resolve_option_contrast(contrast_from_option("x=A-Z"), ["A", "B"])
    with pytest.raises(UsageError, match="3 weights for 2 design columns"):
        resolve_option_contrast(contrast_from_option("x=1,0,1"), ["A", "B"])


def test_parse_model_reads_dataset_nodes_and_skips_first_level_ones():
    doc = _model(GroupBy=["contrast"], Contrasts=[
        {"Name": "inter", "ConditionList": ["a", "b", "c"], "Weights": [[1, -1, 0], [0, 1, -1]], "Test": "F"}])
    doc["Nodes"].insert(0, {"Level": "Run", "Name": "run", "Model": {"X": ["x"]}})
    doc["Edges"] = [{"Source": "run", "Destination": "group", "Filter": {"group": "patient"}}]
    model = parse_model(doc)
    (node,) = model.nodes
    assert node.x == ["intercept"] and node.group_by == ["contrast"]
    assert node.filters == {"group": ["patient"]}
    assert node.contrasts[0].test == "F" and node.contrasts[0].weights.shape == (2, 3)
    assert node.dummy_contrasts == {"contrasts": None, "test": "t"}


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d.pop("Nodes"), "no Nodes"),
    (lambda d: d["Nodes"][0].update(Level="Subject"), "no Dataset-level node"),
    (lambda d: d["Nodes"][0].update(Model={"Type": "meta", "X": [1]}), "only Model.Type 'glm'"),
    (lambda d: d["Nodes"][0].update(Contrasts=[{"Name": "c", "ConditionList": ["a"], "Weights": [1, 2]}]),
     "Weights have 2 columns but ConditionList has 1"),
    (lambda d: d["Nodes"][0].update(Contrasts=[{"Name": "c", "ConditionList": ["a", "b"], "Weights": [[1, 0], [0, 1]], "Test": "t"}]),
     "a t-test takes one row"),
    (lambda d: d["Nodes"][0].update(Transformations={"Transformer": "pybids-transforms-v1",
                                                     "Instructions": [{"Name": "Convolve", "Input": ["x"]}]}),
     "Convolve.*not supported"),
])
def test_parse_model_rejects_invalid_documents(mutate, fragment):
    doc = _model()
    mutate(doc)
    with pytest.raises(UsageError, match=fragment):
        parse_model(doc)


def test_expression_matches_known_columns_longest_first():
    assert parse_expression("A-B", ["A", "B"]) == {"A": 1.0, "B": -1.0}
    assert parse_expression("sub-01 - sub-02", ["sub-01", "sub-02"]) == {"sub-01": 1.0, "sub-02": -1.0}
    assert parse_expression("group.patient-group.control", ["group.control", "group.patient"]) == \
        {"group.patient": 1.0, "group.control": -1.0}
    assert parse_expression("AB-A", ["A", "AB"]) == {"AB": 1.0, "A": -1.0}
