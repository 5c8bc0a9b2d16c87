"""Planning: settings pinned per node, sharding without permutations, filters and GroupBy on numbers."""

from __future__ import annotations

import json

from bids_group_app.cli.run import main


def _run(argv):
    return main([str(a) for a in argv])


def test_shards_without_permutations_are_a_usage_error(nilearn_dataset, tmp_path, capsys):
    for option in (["--perm-shard", "1/2"], ["--merge-perm-shards"]):
        assert _run([nilearn_dataset["root"], tmp_path / "out", "group", "-w", tmp_path / "w", *option]) == 64
        assert "--n-perm" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _model(node):
    return {"Name": "m", "BIDSModelVersion": "1.0.0", "Input": {"contrast": ["motor"]}, "Nodes": [node]}


def test_an_unnamed_dataset_node_runs_and_is_saved_with_its_name(nilearn_dataset, tmp_path):
    model = tmp_path / "m_smdl.json"
    model.write_text(json.dumps(_model({"Level": "Dataset", "Model": {"X": [1]}, "DummyContrasts": True})))
    out = tmp_path / "out"
    assert _run([nilearn_dataset["root"], out, "group", "--no-reports", "--model", model]) == 0
    saved = json.loads((out / "model-m_smdl.json").read_text())
    assert saved["Nodes"][0]["Name"] == "node0"
    assert list(out.glob("node-node0/model-m_*_stat-t_statmap.nii.gz"))


def test_a_numeric_filter_matches_numbers_whatever_their_spelling(nilearn_dataset, tmp_path):
    """``age`` holds 22.0: a Filter of 22 (or 22.0) selects that participant, as a number."""
    for i, spelling in enumerate((22, 22.0, "22")):
        model = tmp_path / f"m{i}_smdl.json"
        node = {"Level": "Dataset", "Name": "g", "Model": {"X": [1]}, "DummyContrasts": True,
                "Filter": {"age": [spelling, 51.8]}}
        model.write_text(json.dumps(_model(node)))
        out = tmp_path / f"out{i}"
        assert _run([nilearn_dataset["root"], out, "group", "--no-reports", "--model", model]) == 0
        [design] = out.glob("node-g/*_design.json")
        assert json.loads(design.read_text())["Subjects"] == ["01", "03"]


def test_methods_text_names_the_participant_label_selection(nilearn_dataset, tmp_path):
    out = tmp_path / "out"
    assert _run([nilearn_dataset["root"], out, "group", "--participant-label", "01", "02", "03"]) == 0
    assert "restricted to the participants sub-01, sub-02 and sub-03" in (out / "logs" / "CITATION.md").read_text()


def test_model_contrast_names_match_fitlins_and_nilearn_labels():
    """A Filter on contrast names as the model writes them; FitLins and nilearn write labels."""
    from bids_group_app.workflow.plan import contrast_names

    assert contrast_names(["task_vs_baseline", "trial_type.word", "a-b"]) == [
        "task_vs_baseline", "taskVsBaseline", "trial_type.word", "trialTypeWord", "a-b", "aB", "aMinusB"]
    assert contrast_names([None]) == [None]
