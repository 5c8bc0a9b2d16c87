"""The model graph in the report and the methods text (issue 10: show the graph that ran)."""

import json
import re

import pytest

from bids_group_app.reporting.graph import consumed, model_edges, model_graph

NODES = [{"Level": "Run", "Name": "run"}, {"Level": "Subject", "Name": "subj"},
         {"Level": "Dataset", "Name": "data", "GroupBy": ["contrast"], "Model": {"Type": "glm", "X": [1]}}]


def test_edges_are_the_models_or_the_nodes_in_order():
    assert [(e["Source"], e["Destination"]) for e in model_edges({"Nodes": NODES})] == [("run", "subj"), ("subj", "data")]
    explicit = {"Nodes": NODES, "Edges": [{"Source": "run", "Destination": "data", "Filter": {"run": [1, 2]}}]}
    assert model_edges(explicit) == [{"Source": "run", "Destination": "data", "Filter": {"run": "1, 2"}}]


def test_consumed_counts_maps_by_dataset_and_node_folder():
    inputs = ["bids:fitlins:node-subj/sub-01/a.nii.gz", "bids:fitlins:node-subj/sub-02/a.nii.gz",
              "bids:nilearn_glm:sub-01/b.nii.gz"]
    assert consumed(inputs) == {"fitlins node-subj": 2, "nilearn_glm": 1}


def test_graph_marks_the_nodes_fit_here_with_their_maps():
    fitted = {"data": [{"NumberOfMaps": 3, "Inputs": ["bids:f:node-subj/x"] * 3},
                       {"NumberOfMaps": 2, "Inputs": ["bids:f:node-subj/y"] * 2}]}
    graph = model_graph({"Nodes": NODES}, fitted)
    assert [(g["name"], g["level"], g["ran"]) for g in graph] == [("run", "Run", False), ("subj", "Subject", False),
                                                                 ("data", "Dataset", True)]
    data = graph[-1]
    assert data["cells"] == 2 and data["maps"] == 5 and data["consumed"] == {"f node-subj": 5}
    assert [e["Source"] for e in data["inputs"]] == ["subj"]


@pytest.fixture(scope="module")
def chain_run(fitlins_dataset, tmp_path_factory, run_cli):
    root = tmp_path_factory.mktemp("graph")
    model = {"Name": "chain", "BIDSModelVersion": "1.0.0", "Input": {"task": ["localizer"]},
             "Nodes": [{"Level": "Run", "Name": "runLevel", "GroupBy": ["run", "subject"],
                        "Model": {"Type": "glm", "X": ["motor", 1]}, "DummyContrasts": {"Test": "t"}},
                       {"Level": "Subject", "Name": "subjectLevel", "GroupBy": ["subject", "contrast"],
                        "Model": {"Type": "glm", "X": [1]}, "DummyContrasts": {"Test": "t"}},
                       {"Level": "Dataset", "Name": "dataLevel", "GroupBy": ["contrast"],
                        "Model": {"Type": "glm", "X": [1]}, "DummyContrasts": {"Test": "t"}}],
             "Edges": [{"Source": "runLevel", "Destination": "subjectLevel"},
                       {"Source": "subjectLevel", "Destination": "dataLevel", "Filter": {"contrast": ["motor"]}}]}
    (root / "model.json").write_text(json.dumps(model))
    out = root / "out"
    assert run_cli([fitlins_dataset["root"], out, "group", "--quiet", "--model", root / "model.json"]) == 0
    assert run_cli([fitlins_dataset["root"], out, "group", "--quiet", "--reports-only"]) == 0  # the HTML report too
    return out


def test_report_draws_the_graph_in_order_with_what_each_node_read(chain_run):
    page = (chain_run / "model-chain_report.html").read_text()
    graph = page[page.index('<div class="graph">'):page.index("<h4>Software</h4>")]
    names = re.findall(r"<strong>(\w+)</strong>", graph)
    assert names == ["runLevel", "subjectLevel", "dataLevel"]
    assert graph.count('class="node ran"') == 1
    n_maps = json.loads(next((chain_run / "node-dataLevel").glob("*_design.json")).read_text())["NumberOfMaps"]
    assert f"{n_maps} maps read" in graph and f"{n_maps} from fitlins node-subjectLevel" in graph
    assert "from subjectLevel where contrast is motor" in graph


def test_methods_text_states_the_graph(chain_run):
    text = (chain_run / "logs" / "CITATION.md").read_text()
    assert ("The graph of model `chain`: nodes `runLevel` (Run), `subjectLevel` (Subject), `dataLevel` (Dataset); "
            "edges `runLevel` → `subjectLevel`, `subjectLevel` → `dataLevel`.") in text
    assert "Node `dataLevel` was fitted here on" in text and "`fitlins node-subjectLevel`" in text
    assert "the outputs of `subjectLevel` with `contrast` = `motor`" in text
    assert "Nodes `runLevel` and `subjectLevel` were not fitted by this application (they made its inputs)." in text


def test_methods_text_and_report_say_which_node_was_computed_here(tmp_path, run_cli):
    from bids_group_app.example_data import make_example_dataset

    truth = make_example_dataset(tmp_path / "ds", "fitlins", n_subjects=4, n_runs=2, subject_level=False)
    model = {"Name": "fema", "BIDSModelVersion": "1.0.0",
             "Nodes": [{"Level": "Run", "Name": "runLevel", "GroupBy": ["run", "subject"],
                        "Model": {"Type": "glm", "X": ["motor", 1]}, "DummyContrasts": {"Test": "t"}},
                       {"Level": "Subject", "Name": "subjectLevel", "GroupBy": ["subject", "contrast"],
                        "Model": {"Type": "meta", "X": [1]}, "DummyContrasts": {"Test": "FEMA"}},
                       {"Level": "Dataset", "Name": "dataLevel", "GroupBy": ["contrast"],
                        "Model": {"Type": "glm", "X": [1]}, "DummyContrasts": {"Test": "t"}}]}
    (tmp_path / "model.json").write_text(json.dumps(model))
    out = tmp_path / "out"
    assert run_cli([truth["root"], out, "group", "--quiet", "--model", tmp_path / "model.json"]) == 0
    assert run_cli([truth["root"], out, "group", "--quiet", "--reports-only"]) == 0
    n_computed = len(list(out.glob("node-subjectLevel/sub-*/*_stat-effect_statmap.json")))
    assert n_computed == 4 * 2  # subjects x first-level contrasts
    text = (out / "logs" / "CITATION.md").read_text()
    assert (f"Node `subjectLevel` was computed here: {n_computed} subject-level maps (fixed effects) "
            "from the run-level maps of `runLevel`.") in text
    assert "Node `runLevel` was not fitted by this application (it made its inputs)." in text
    page = (out / "model-fema_report.html").read_text()
    assert f"computed here: {n_computed} subject maps (fixed effects)" in page


def test_methods_text_and_report_describe_fema_pass_and_a_dataset_chain(tmp_path, run_cli):
    """FEMA, pass and a Dataset→Dataset edge: the methods text says how each was computed and what fed
    what; the report names each contrast's test and draws no z viewer for a contrast without a test."""
    from bids_group_app.example_data import make_example_dataset

    truth = make_example_dataset(tmp_path / "ds", "fitlins", n_subjects=4, n_runs=2, subject_level=False)
    model = {"Name": "ffx", "BIDSModelVersion": "1.0.0", "Input": {"contrast": ["motor"]},
             "Nodes": [{"Level": "Run", "Name": "runLevel", "GroupBy": ["run", "subject"],
                        "Model": {"Type": "glm", "X": ["motor", 1]}, "DummyContrasts": {"Test": "t"}},
                       {"Level": "Subject", "Name": "subjectLevel", "GroupBy": ["subject", "contrast"],
                        "Model": {"Type": "meta", "X": [1]}, "DummyContrasts": {"Test": "FEMA"}},
                       {"Level": "Dataset", "Name": "fixed", "GroupBy": ["contrast"], "Model": {"X": [1]},
                        "Contrasts": [{"Name": "mean", "ConditionList": [1], "Weights": [1], "Test": "FEMA"},
                                      {"Name": "kept", "ConditionList": [1], "Weights": [2], "Test": "pass"}]},
                       {"Level": "Dataset", "Name": "pooled", "GroupBy": [], "Model": {"X": [1]},
                        "DummyContrasts": {"Test": "t"}}],
             "Edges": [{"Source": "runLevel", "Destination": "subjectLevel"},
                       {"Source": "subjectLevel", "Destination": "fixed"},
                       {"Source": "fixed", "Destination": "pooled"}]}
    (tmp_path / "model.json").write_text(json.dumps(model))
    out = tmp_path / "out"
    assert run_cli([truth["root"], out, "group", "--quiet", "--model", tmp_path / "model.json"]) == 0
    assert run_cli([truth["root"], out, "group", "--quiet", "--reports-only"]) == 0
    text = (out / "logs" / "CITATION.md").read_text()
    assert "edges `runLevel` → `subjectLevel`, `subjectLevel` → `fixed`, `fixed` → `pooled`." in text
    assert "`mean` (fixed-effects combination `intercept`); `kept` (`2*intercept`, passed on without a test)" in text
    assert "Fixed-effects (FEMA) contrasts were computed from the effect and variance maps" in text
    assert "Contrasts whose Test is `pass` gave only the effect and variance maps" in text
    assert "The model was fitted to 2 maps that another Dataset node of this model wrote" in text
    assert "Node `pooled` was fitted here on 2 maps (2 from `OUTPUT_DIR node-fixed`), the outputs of `fixed`." in text
    page = (out / "model-ffx_report.html").read_text()
    assert "Contrast “mean” (fixed-effects (FEMA) t-test, 400.0 degrees of freedom)" in page
    assert "Contrast “kept” (passed on without a test (effect map)" in page
    assert "viewer kept" not in page and "viewer mean" in page
