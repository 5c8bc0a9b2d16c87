"""Several models in one OUTPUT_DIR, and saved models that reproduce their runs.

Regression tests of issue 8: maps of two models never share a file (defect
1); the report step works when a second model is written into an OUTPUT_DIR
and in the README's HPC recipe (defect 2); ``--model`` on the saved model
reproduces every map bit for bit, whatever analysis options the run had
(defect 6).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bids_group_app.cli.run import main
from bids_group_app.outputs.naming import parse


def _digests(folder):
    """``{relative path: sha256}`` of every map under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*.nii.gz"))}


def _run(argv):
    return main([str(a) for a in argv])


def test_a_second_model_never_overwrites_the_first_models_maps(nilearn_dataset, tmp_path):
    ds, out = nilearn_dataset["root"], tmp_path / "out"
    assert _run([ds, out, "group", "--no-reports", "--covariates", "age"]) == 0
    first = _digests(out)
    [first_model] = sorted(out.glob("model-*_smdl.json"))
    assert _run([ds, out, "group", "--no-reports", "--covariates", "age", "sex"]) == 0
    after = _digests(out)
    # every map of the first model is still there, unchanged
    assert {k: after.get(k) for k in first} == first
    # the second model wrote its own files, under its own (hashed) model label
    second = set(after) - set(first)
    assert second and all(parse(k).get("model") != parse(next(iter(first))).get("model") for k in second)
    models = sorted(out.glob("model-*_smdl.json"))
    assert len(models) == 2
    # --model on the first saved model reproduces what is on disk for it, bit for bit
    again = tmp_path / "again"
    assert _run([ds, again, "group", "--no-reports", "--model", first_model]) == 0
    assert _digests(again) == first


def test_reports_of_two_models_in_one_output_dir(nilearn_dataset, tmp_path):
    ds, out = nilearn_dataset["root"], tmp_path / "out"
    assert _run([ds, out, "group", "--quiet"]) == 0
    assert _run([ds, out, "group", "--quiet", "--covariates", "age"]) == 0
    reports = sorted(p.name for p in out.glob("model-*_report.html"))
    assert reports == ["model-oneSample_report.html", "model-regression_report.html"]
    figures = [parse(p.relative_to(out)) for p in out.glob("figures/*")]
    assert {f.get("model") for f in figures} == {"oneSample", "regression"}
    # each report shows its own model's figures only
    for report in reports:
        label = parse(report).get("model")
        page = (out / report).read_text()
        shown = {parse(src).get("model") for src in _figure_sources(page)}
        assert shown == {label}


def _figure_sources(page):
    import re

    return re.findall(r'(?:src|href)="(figures/[^"]+)"', page)


def test_hpc_recipe_cells_and_models_without_reports_then_reports_only(nilearn_dataset, tmp_path):
    """The README's job-array recipe: cells and models as separate tasks, then one --reports-only."""
    ds, out = nilearn_dataset["root"], tmp_path / "out"
    for argv in (["--filter", "contrast=motor"], ["--filter", "contrast=language"],
                 ["--covariates", "age", "--filter", "contrast=motor"]):
        assert _run([ds, out, "group", "--no-reports", "--quiet", *argv]) == 0
    before = _digests(out)
    assert _run([ds, out, "group", "--reports-only", "--quiet"]) == 0
    assert _digests(out) == before
    assert sorted(p.name for p in out.glob("model-*_report.html")) == [
        "model-oneSample_report.html", "model-regression_report.html"]


@pytest.mark.parametrize("options", [
    pytest.param(["--mask", "mni152-brain", "--smoothing-fwhm", "8", "--two-sided", "--height-control", "fdr",
                  "--alpha", "0.05", "--cluster-threshold", "2"], id="estimation-parametric"),
    pytest.param(["--n-perm", "40", "--tfce", "--tfce-e", "0.6", "--tfce-h", "1.5", "--connectivity", "26",
                  "--seed", "7", "--fwe-alpha", "0.1", "--two-sided"], id="tfce"),
    pytest.param(["--covariates", "age", "--n-perm", "30", "--cluster-forming-p", "0.01", "--shuffle", "permute",
                  "--seed", "3"], id="clusters"),
])
def test_saved_model_reproduces_the_run_bit_for_bit(nilearn_dataset, tmp_path, options):
    ds, out = nilearn_dataset["root"], tmp_path / "out"
    assert _run([ds, out, "group", "--no-reports", *options]) == 0
    [saved] = sorted(out.glob("model-*_smdl.json"))
    again = tmp_path / "again"
    assert _run([ds, again, "group", "--no-reports", "--model", saved]) == 0
    assert _digests(again) == _digests(out)
    # and the settings are in the model, where a reader finds them
    node = json.loads(saved.read_text())["Nodes"][0]
    software = node["Model"]["Software"]["bids_group_app"]
    assert software["Seed"] == (int(options[options.index("--seed") + 1]) if "--seed" in options else 0)


def test_command_line_overrides_the_saved_settings(nilearn_dataset, tmp_path):
    ds, out = nilearn_dataset["root"], tmp_path / "out"
    assert _run([ds, out, "group", "--no-reports", "--height-control", "fdr", "--alpha", "0.05"]) == 0
    [saved] = sorted(out.glob("model-*_smdl.json"))
    other = tmp_path / "other"
    assert _run([ds, other, "group", "--no-reports", "--model", saved, "--height-control", "bonferroni"]) == 0
    [sidecar] = sorted(other.glob("node-*/*input-motor*_thresh-bonferroni_statmap.json"))
    about = json.loads(sidecar.read_text())
    assert about["HeightControl"] == "bonferroni" and about["Alpha"] == 0.05


def test_bad_saved_setting_is_a_usage_error(nilearn_dataset, tmp_path, capsys):
    ds, out = nilearn_dataset["root"], tmp_path / "out"
    assert _run([ds, out, "group", "--no-reports"]) == 0
    [saved] = sorted(out.glob("model-*_smdl.json"))
    document = json.loads(saved.read_text())
    document["Nodes"][0]["Model"]["Software"]["bids_group_app"]["Connectivity"] = 7
    bad = tmp_path / "bad_smdl.json"
    bad.write_text(json.dumps(document))
    capsys.readouterr()
    assert _run([ds, tmp_path / "o2", "group", "--model", bad]) == 64
    err = capsys.readouterr().err.strip()
    assert "Connectivity=7" in err and "6, 18 or 26" in err and len(err.splitlines()) == 1


def _t_maps(folder, label):
    """``{file name without the model label: array}`` of the t maps of model ``label``."""
    import nibabel as nib

    maps = {}
    for path in sorted(Path(folder).rglob("*_stat-t_statmap.nii.gz")):
        name = parse(path.relative_to(folder))
        if name.get("model") == label:
            maps[path.name.replace(f"model-{label}_", "")] = np.asarray(nib.load(path).dataobj)
    return maps


def _assert_same_maps(got, expected):
    assert got and sorted(got) == sorted(expected)
    for key, array in expected.items():
        assert np.array_equal(got[key], array, equal_nan=True), key


def test_runs_with_different_participants_keep_their_own_saved_models(nilearn_dataset, tmp_path):
    """Issue 9: a second --participant-label selection is saved as its own model, not merged into the first."""
    ds, out = nilearn_dataset["root"], tmp_path / "out"
    runs = [["01", "02", "03", "04", "05"], ["04", "05", "06", "07", "08", "09"]]
    expected = []
    for labels in runs:
        before = set(out.glob("model-*_smdl.json"))
        assert _run([ds, out, "group", "--no-reports", "--quiet", "--participant-label", *labels]) == 0
        [saved] = set(out.glob("model-*_smdl.json")) - before  # each run saves a model file of its own
        label = saved.name[len("model-"):-len("_smdl.json")]
        expected.append((labels, saved, _t_maps(out, label)))
    saved_texts = {saved: saved.read_text() for _, saved, _ in expected}
    for i, (labels, saved, maps) in enumerate(expected):
        document = json.loads(saved.read_text())
        assert document["Input"]["subject"] == labels
        again = tmp_path / f"again{i}"
        assert _run([ds, again, "group", "--no-reports", "--quiet", "--model", saved]) == 0
        _assert_same_maps(_t_maps(again, document["Name"]), maps)
    # a third run with the first run's participants lands in the first run's model
    first_labels, first_saved, first_maps = expected[0]
    assert _run([ds, out, "group", "--no-reports", "--quiet", "--participant-label", *first_labels]) == 0
    assert set(out.glob("model-*_smdl.json")) == set(saved_texts)
    assert {p: p.read_text() for p in saved_texts} == saved_texts
    _assert_same_maps(_t_maps(out, first_saved.name[len("model-"):-len("_smdl.json")]), first_maps)


def test_an_unreadable_saved_model_is_left_alone(nilearn_dataset, tmp_path, capsys, caplog):
    """Issue 9: a corrupt model-<Name>_smdl.json is never overwritten.

    The run goes ahead under the hashed label (another model's damaged file
    must not break it), warns that the methods text leaves the damaged model
    out, and leaves the file as it is.
    """
    from bids_group_app.outputs.commit import model_label

    ds, out = nilearn_dataset["root"], tmp_path / "out"
    out.mkdir()
    corrupt = out / "model-oneSample_smdl.json"
    text = '{"Name": "oneSample", "Nodes": [\n'
    corrupt.write_text(text)
    capsys.readouterr()
    assert _run([ds, out, "group", "--no-reports", "--quiet"]) == 0
    assert "leaves out model-oneSample_smdl.json" in caplog.text
    assert corrupt.read_text() == text
    (saved,) = [p for p in out.glob("model-oneSample*_smdl.json") if p != corrupt]
    assert len(saved.name) == len("model-oneSample_smdl.json") + 8
    assert all(p.name.startswith(saved.name[: -len("_smdl.json")]) for p in out.glob("node-*/*"))
    document = {"Name": "oneSample", "Nodes": [], "Input": {"contrast": ["motor"]}}
    label = model_label(out, document)
    assert label.startswith("oneSample") and len(label) == len("oneSample") + 8
    corrupt.unlink()
    assert model_label(out, document) == "oneSample"
