"""Model-spec parsing: BIDS Stats Models validation and the --contrast grammar."""

import json
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
    (lambda d: d["Nodes"][0].update(Model={"Type": "meta", "X": [1]}, DummyContrasts={"Test": "F"}),
     r"Test 'F' in a Model.Type 'meta' node"),
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


# --------------------------------------------------------------------------
# Every key of the BIDS Stats Models schema (bsmschema 1.0): works, or exit 64 naming it
# --------------------------------------------------------------------------
def _set(path, value):
    """A mutation of ``_model()`` setting the key at ``path`` (a tuple of keys/indexes) to ``value``."""
    def mutate(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _with_run_node(**extra):
    def mutate(doc):
        doc["Nodes"].insert(0, {"Level": "Run", "Name": "run", "GroupBy": ["run", "subject"],
                                "Model": {"Type": "glm", "X": ["a"]}, **extra})
    return mutate


CONTRAST = {"Name": "c", "ConditionList": [1], "Weights": [1], "Test": "t"}
OK = None
KEY_CASES = {
    # top level
    "Name": (_set(("Name",), "x"), OK),
    "BIDSModelVersion": (_set(("BIDSModelVersion",), "1.0.0"), OK),
    "Description": (_set(("Description",), "a model"), OK),
    "Input": (_set(("Input",), {"task": ["a"]}), OK),
    "Edges": (_set(("Edges",), [{"Source": "group", "Destination": "group", "Filter": {"sex": ["M"]},
                                  "Description": "an edge"}]), OK),
    "unknown top-level key": (_set(("Nodez",), []), r"'Nodez' is not a BIDS Stats Models key"),
    "lower-case key": (_set(("name",), "x"), r"has both 'name' and 'Name'; keep 'Name'"),
    "unknown Edge key": (_set(("Edges",), [{"Source": "group", "Destination": "group", "Weight": 1}]),
                         r"Edges\[0\]\.Weight"),
    # node
    "Node.GroupBy": (_set(("Nodes", 0, "GroupBy"), ["contrast"]), OK),
    "Node.Description": (_set(("Nodes", 0, "Description"), "a node"), OK),
    "Node.Filter": (_set(("Nodes", 0, "Filter"), {"sex": "M"}), OK),
    "Node.Transformations": (_set(("Nodes", 0, "Transformations"), {
        "Transformer": "pybids-transforms-v1", "Instructions": [], "Description": "none"}), OK),
    "unknown Transformations key": (_set(("Nodes", 0, "Transformations"), {
        "Transformer": "pybids-transforms-v1", "Instructions": [], "Order": 1}), r"Nodes\[0\] 'group' Transformations\.Order"),
    "unknown Node key": (_set(("Nodes", 0, "Variance"), 1), r"Nodes\[0\]\.Variance.*not a BIDS Stats Models key"),
    # model
    "Model.Description": (_set(("Nodes", 0, "Model", "Description"), "glm"), OK),
    "Model.Formula": (_set(("Nodes", 0, "Model", "Formula"), "1"), OK),
    "Model.Software": (_set(("Nodes", 0, "Model", "Software"), {"bids_group_app": {}}), OK),
    "Model.Options empty": (_set(("Nodes", 0, "Model", "Options"), {}), OK),
    "Model.HRF": (_set(("Nodes", 0, "Model", "HRF"), {"Variables": ["a"], "Model": "spm"}),
                  r"Nodes\[0\]\.Model\.HRF.*not supported"),
    "Model.Options.Mask": (_set(("Nodes", 0, "Model", "Options"), {"Mask": {"desc": "brain"}}),
                           r"Nodes\[0\]\.Model\.Options\.Mask.*not supported"),
    "Model.Options.HighPassFilterCutoffHz": (_set(("Nodes", 0, "Model", "Options"), {"HighPassFilterCutoffHz": 0.01}),
                                             r"Nodes\[0\]\.Model\.Options\.HighPassFilterCutoffHz"),
    "Model.Options.LowPassFilterCutoffHz": (_set(("Nodes", 0, "Model", "Options"), {"LowPassFilterCutoffHz": 0.1}),
                                            r"Nodes\[0\]\.Model\.Options\.LowPassFilterCutoffHz"),
    "Model.Options.ReplaceVariables": (_set(("Nodes", 0, "Model", "Options"), {"ReplaceVariables": {"a": 1}}),
                                       r"Nodes\[0\]\.Model\.Options\.ReplaceVariables"),
    "Model.Options.Aggregate": (_set(("Nodes", 0, "Model", "Options"), {"Aggregate": "mean"}),
                                r"Nodes\[0\]\.Model\.Options\.Aggregate"),
    "unknown Options key": (_set(("Nodes", 0, "Model", "Options"), {"Smoothing": 6}),
                            r"Nodes\[0\]\.Model\.Options\.Smoothing.*not a BIDS Stats Models key"),
    "Model.VarianceComponents": (_set(("Nodes", 0, "Model", "VarianceComponents"), [{"Name": "s", "LevelsFrom": "subject"}]),
                                 r"Nodes\[0\]\.Model\.VarianceComponents.*not supported"),
    "Model.ErrorDistribution": (_set(("Nodes", 0, "Model", "ErrorDistribution"), {"Family": "gaussian"}),
                                r"Nodes\[0\]\.Model\.ErrorDistribution.*not supported"),
    "unknown Model key": (_set(("Nodes", 0, "Model", "Y"), ["a"]), r"Nodes\[0\]\.Model\.Y.*not a BIDS Stats Models key"),
    "Model.Type meta": (_set(("Nodes", 0, "Model", "Type"), "meta"), OK),
    "Model.Type meta with an F test": (lambda d: d["Nodes"][0].update(
        Model={"Type": "meta", "X": [1]}, DummyContrasts={"Test": "F"}),
        r"Nodes\[0\]\.DummyContrasts: Test 'F' in a Model.Type 'meta' node"),
    "Model.Type unknown": (_set(("Nodes", 0, "Model", "Type"), "lme"), r"Nodes\[0\]\.Model\.Type.*'glm' or 'meta'"),
    # contrasts
    "Contrast.Description": (_set(("Nodes", 0, "Contrasts"), [{**CONTRAST, "Description": "mean"}]), OK),
    "unknown Contrast key": (_set(("Nodes", 0, "Contrasts"), [{**CONTRAST, "Tail": "two"}]),
                             r"Nodes\[0\]\.Contrasts\[0\]\.Tail"),
    "Contrast.Test pass": (_set(("Nodes", 0, "Contrasts"), [{**CONTRAST, "Test": "pass"}]), OK),
    "Contrast.Test FEMA": (_set(("Nodes", 0, "Contrasts"), [{**CONTRAST, "Test": "FEMA"}]), OK),
    "Contrast.Test FEMA with two rows": (_set(("Nodes", 0, "Contrasts"), [
        {"Name": "two", "ConditionList": ["a", "b"], "Weights": [[1, 0], [0, 1]], "Test": "FEMA"}]),
        r"Nodes\[0\]\.Contrasts\[0\] 'two': Test 'FEMA' takes one row of weights"),
    "Contrast.Test unknown": (_set(("Nodes", 0, "Contrasts"), [{**CONTRAST, "Test": "z"}]), r"Test must be one of"),
    "DummyContrasts.Description": (_set(("Nodes", 0, "DummyContrasts"), {"Test": "t", "Description": "d"}), OK),
    "DummyContrasts.Test F": (_set(("Nodes", 0, "DummyContrasts"), {"Test": "F"}), OK),
    "DummyContrasts.Test pass": (_set(("Nodes", 0, "DummyContrasts"), {"Test": "pass"}), OK),
    "DummyContrasts.Test FEMA": (_set(("Nodes", 0, "DummyContrasts"), {"Test": "FEMA"}), OK),
    "unknown DummyContrasts key": (_set(("Nodes", 0, "DummyContrasts"), {"Test": "t", "Weights": [1]}),
                                   r"Nodes\[0\]\.DummyContrasts\.Weights"),
    # first-level nodes: only spec keys are checked, draft and first-level keys are fine
    "Run node HRF/Options/VarianceComponents": (_with_run_node(Model={
        "Type": "glm", "X": ["a"], "HRF": {"Variables": ["a"], "Model": "spm"},
        "Options": {"HighPassFilterCutoffHz": 0.008, "Mask": {"desc": "brain"}},
        "VarianceComponents": []}), OK),
    "Run node meta/FEMA/pass": (_with_run_node(
        Model={"Type": "meta", "X": ["a"]},
        Contrasts=[{"Name": "a", "ConditionList": ["a"], "Weights": [1], "Test": "FEMA"}],
        DummyContrasts={"Test": "pass"}), OK),
    "Run node unknown key": (_with_run_node(Bogus=1), r"Nodes\[0\]\.Bogus"),
    "Run node unknown HRF key": (_with_run_node(Model={"X": ["a"], "HRF": {"Model": "spm", "Delay": 2}}),
                                 r"Nodes\[0\]\.Model\.HRF\.Delay"),
}


@pytest.mark.parametrize("case", list(KEY_CASES))
def test_every_spec_key_works_or_is_refused_by_name(case):
    mutate, refusal = KEY_CASES[case]
    doc = _model()
    mutate(doc)
    if refusal is None:
        parse_model(doc)
    else:
        with pytest.raises(UsageError, match=refusal):
            parse_model(doc)


def test_spec_fields_are_exposed_on_the_node():
    doc = _model(Contrasts=[{"Name": "c", "ConditionList": [1], "Weights": ["1/3"], "Test": "t"}])
    doc["Nodes"][0]["Model"].update(Formula="1 + age", X=[1, "age"])
    (node,) = parse_model(doc).nodes
    assert node.formula == "1 + age" and node.model_type == "glm"
    np.testing.assert_allclose(node.contrasts[0].weights, [[1 / 3]])  # fractions as strings (spec)


@pytest.mark.parametrize("formula, fragment", [
    ("age", "1 or 0 term"),
    ("y ~ 1 + age", "right-hand side"),
    ("1 + (age", "Nodes\\[0\\]\\.Model\\.Formula"),
    (5, "must be a string"),
])
def test_formula_is_checked_when_read(formula, fragment):
    doc = _model()
    doc["Nodes"][0]["Model"].update(Formula=formula, X=[1, "age"])
    with pytest.raises(UsageError, match=fragment):
        parse_model(doc)


# --------------------------------------------------------------------------
# DummyContrasts forms and legacy (pre-1.0) documents
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dummy, expected, legacy", [
    (True, {"contrasts": None, "test": "t"}, False),
    ({"Test": "t"}, {"contrasts": None, "test": "t"}, False),
    ({"Test": "F"}, {"contrasts": None, "test": "F"}, False),
    ({"Contrasts": [1, "age"], "Test": "t"}, {"contrasts": ["intercept", "age"], "test": "t"}, False),
    ({"Contrasts": ["age"]}, {"contrasts": ["age"], "test": "t"}, False),
    ({"Conditions": ["age"], "Test": "t"}, {"contrasts": ["age"], "test": "t"}, True),
    ({"ConditionList": ["age"], "Test": "t"}, {"contrasts": ["age"], "test": "t"}, True),
    ({"Type": "t"}, {"contrasts": None, "test": "t"}, True),
    (False, None, False),
])
def test_dummy_contrasts_forms(dummy, expected, legacy, caplog):
    doc = _model(DummyContrasts=dummy)
    with caplog.at_level("WARNING"):
        (node,) = parse_model(doc).nodes
    assert node.dummy_contrasts == expected
    assert ("DummyContrasts" in caplog.text) == legacy, caplog.text


def test_legacy_document_is_upgraded_with_a_warning(caplog):
    legacy = {
        "Name": "old",
        "Steps": [
            {"Level": "run", "Model": {"X": ["a"]}, "AutoContrasts": ["a"]},
            {"Level": "dataset", "Name": "group", "Model": {"X": [1]},
             "Transformations": [{"Name": "Demean", "Input": ["age"]}],
             "Contrasts": [{"Name": "mean", "ConditionList": [1], "Weights": [1], "Type": "T"}],
             "AutoContrasts": True},
        ],
    }
    with caplog.at_level("WARNING"):
        model = parse_model(legacy)
    (node,) = model.nodes
    assert node.contrasts[0].test == "t" and node.dummy_contrasts == {"contrasts": None, "test": "t"}
    assert node.transformations == [{"Name": "Demean", "Input": ["age"]}]
    assert "Steps" not in model.document and len(model.document["Nodes"]) == 2
    assert model.document["Nodes"][1]["Transformations"]["Transformer"] == "pybids-transforms-v1"
    for note in ("Steps", "AutoContrasts", "Type", "Transformations"):
        assert note in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        parse_model(model.document)  # the upgraded document is a 1.0 document: no warning
    assert "legacy" not in caplog.text


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d.update(Steps=d["Nodes"]), "both Nodes and the legacy Steps"),
    (lambda d: d["Nodes"][0].update(AutoContrasts=True), "both AutoContrasts and DummyContrasts"),
    (lambda d: d["Nodes"][0].update(Contrasts=[{**CONTRAST, "Type": "t"}]), "both Test and the legacy Type"),
])
def test_legacy_documents_that_cannot_be_upgraded(mutate, fragment):
    doc = _model()
    mutate(doc)
    with pytest.raises(UsageError, match=fragment):
        parse_model(doc)


def test_keys_spelled_as_pybids_reads_them_are_normalised(caplog):
    """PyBIDS reads keys snake_cased (``weights`` is ``Weights``): published FitLins/PyBIDS models use both."""
    from bids_group_app.model.spec import parse_model

    document = {"Name": "m", "BIDSModelVersion": "1.0.0", "Nodes": [{
        "Level": "Dataset", "Name": "d", "Model": {"Type": "glm", "X": [1, "age"]},
        "Contrasts": [{"Name": "age", "Condition_list": ["age"], "weights": [1], "Test": "t"}]}]}
    spec = parse_model(document)
    (contrast,) = spec.nodes[0].contrasts
    assert contrast.conditions == ["age"] and contrast.weights.tolist() == [[1.0]]
    assert "Condition_list is read as ConditionList" in caplog.text and "weights is read as Weights" in caplog.text
    clash = json.loads(json.dumps(document))
    clash["Nodes"][0]["Contrasts"][0]["Weights"] = [1]
    with pytest.raises(UsageError, match="has both 'weights' and 'Weights'"):
        parse_model(clash)


def test_formula_may_start_with_a_tilde_but_has_no_left_hand_side():
    from bids_group_app.model.spec import parse_model

    def node(formula):
        return {"Name": "m", "BIDSModelVersion": "1.0.0", "Nodes": [{
            "Level": "Dataset", "Name": "d", "Model": {"Type": "glm", "X": [1, "age"], "Formula": formula},
            "DummyContrasts": {"Test": "t"}}]}

    assert parse_model(node("~ 1 + age")).nodes[0].formula == "1 + age"
    with pytest.raises(UsageError, match="left-hand side"):
        parse_model(node("y ~ 1 + age"))


def test_model_less_pre_1_0_steps_are_upgraded_as_pybids_ran_them(caplog):
    """FitLins's pre-1.0 examples: unnamed steps without Model, DummyContrasts Conditions/Type."""
    from bids_group_app.model.spec import parse_model, upgrade_legacy

    legacy = {"Name": "Basic", "Steps": [
        {"Level": "run", "Model": {"X": ["a"]}, "DummyContrasts": {"Conditions": ["a"], "Type": "t"}},
        {"Level": "subject", "DummyContrasts": {"Conditions": ["face_vs_scram"], "Type": "FEMA"}},
        {"Level": "dataset", "DummyContrasts": {"Conditions": ["face_vs_scram"], "Type": "t"}}]}
    upgraded = upgrade_legacy(legacy)
    run, subject, dataset = upgraded["Nodes"]
    assert [n["Name"] for n in upgraded["Nodes"]] == ["run", "subject", "dataset"]
    assert subject["Model"] == {"Type": "meta", "X": [1]} and subject["GroupBy"] == ["subject", "contrast"]
    assert dataset["Model"] == {"Type": "glm", "X": [1]} and dataset["GroupBy"] == ["contrast"]
    assert dataset["Filter"] == {"contrast": ["face_vs_scram"]} and dataset["DummyContrasts"] == {"Test": "t"}
    assert run["Model"] == {"X": ["a"]}  # a step with a Model keeps it
    assert "Steps" in legacy and "Nodes" not in legacy  # the input document is not changed
    (node,) = parse_model(legacy).nodes
    assert node.name == "dataset" and node.x == ["intercept"]
    assert "has no Model: an intercept model per first-level contrast (face_vs_scram)" in caplog.text
