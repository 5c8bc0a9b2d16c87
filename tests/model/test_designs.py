"""Design matrices and contrast weights written by the CLI, against hand-built ones.

For each design the expected matrix is built here with numpy/pandas from
participants.tsv, the way a statistician would write it down, and compared
with the written ``<cell>_design.tsv`` (column names and order, values) and
with the contrast weights of the statmap sidecars. Every design is run
from the short options and from an equivalent BIDS Stats Models JSON; a few
more JSON models exercise transformations and filters.

Rows follow the order of the ``Inputs`` listed in the design sidecar (the
order of the rows is the app's choice); each row's subject and condition
are read from the input file name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

CONDITIONS = ["IniFF", "ImmFF", "DelFF", "IniUF", "ImmUF", "DelUF", "IniSF", "ImmSF", "DelSF"]
INTERACTION = np.vstack([np.kron([1 / 2, 1 / 2, -1], [1, -1, 0]), np.kron([1, -1, 0], [1, -1, 0])])
INTERACTION_OPTION = "interaction=F:1/2,-1/2,0,1/2,-1/2,0,-1,1,0;1,-1,0,-1,1,0,0,0,0"
FACES_SCRAMBLED = np.array([1 / 6] * 6 + [-1 / 3] * 3)
FACES_SCRAMBLED_OPTION = "FacesScrambled=" + ",".join(["1/6"] * 6 + ["-1/3"] * 3)
TRANSFORMER = "pybids-transforms-v1"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def read_participants(root):
    table = pd.read_csv(Path(root) / "participants.tsv", sep="\t", na_values=["n/a"], keep_default_na=False)
    table["participant_id"] = table["participant_id"].str.replace(r"^sub-", "", regex=True)
    return table.set_index("participant_id")


def model_document(node, *, name="model", inputs=None, extra_nodes=(), edges=None):
    document = {"Name": name, "BIDSModelVersion": "1.0.0", "Input": inputs or {},
                "Nodes": [*extra_nodes, {"Level": "Dataset", "Name": name, **node}]}
    if edges:
        document["Edges"] = edges
    return document


def cells(out_dir):
    """Every written cell: design sidecar, design table and rows (subject, desc)."""
    found = []
    for path in sorted(Path(out_dir).glob("node-*/*design.json")):
        stem = path.name[: -len("design.json")]
        sidecar = json.loads(path.read_text())
        table = pd.read_csv(path.with_name(f"{stem}design.tsv"), sep="\t")
        names = [Path(p).name for p in sidecar["Inputs"]]
        rows = pd.DataFrame({
            "subject": [re.match(r"sub-([A-Za-z0-9]+)_", n).group(1) for n in names],
            "desc": [(re.search(r"_desc-([A-Za-z0-9]+)_", n) or [None, None])[1] for n in names],
            "contrast": [(re.search(r"_contrast-([A-Za-z0-9]+)_", n) or [None, None])[1] for n in names],
        })
        found.append(SimpleNamespace(dir=path.parent, stem=stem, sidecar=sidecar, table=table, rows=rows))
    return found


def cell_for(out_dir, **group):
    hits = [c for c in cells(out_dir) if all(str(c.sidecar["GroupBy"].get(k)) == str(v) for k, v in group.items())]
    assert len(hits) == 1, f"{len(hits)} cells with GroupBy {group} in {out_dir}"
    return hits[0]


def contrast_sidecar(cell, name):
    """The t/F statmap sidecar of the contrast called ``name`` (as in the model)."""
    hits = []
    for path in cell.dir.glob(f"{cell.stem}contrast-*_statmap.json"):
        if "_thresh-" in path.name:
            continue
        content = json.loads(path.read_text())
        if content["Contrast"]["Name"] == name and content["Statistic"] in ("t", "F"):
            hits.append(content)
    assert len(hits) == 1, f"{len(hits)} t/F sidecars for contrast {name!r} in {cell.dir}"
    return hits[0]


def assert_design(cell, expected):
    """Written design == expected DataFrame (column names, order and values)."""
    assert list(cell.table.columns) == list(expected.columns)
    assert cell.sidecar["Columns"] == list(expected.columns)
    assert cell.table.shape == expected.shape
    np.testing.assert_allclose(cell.table.to_numpy(float), expected.to_numpy(float), rtol=1e-12, atol=1e-10)
    X = expected.to_numpy(float)
    assert cell.sidecar["Rank"] == np.linalg.matrix_rank(X)
    assert cell.sidecar["DegreesOfFreedom"] == len(X) - np.linalg.matrix_rank(X)


def assert_contrasts(cell, contrasts):
    """Sidecar weights (over the design columns) of each ``(name, test, weights)``."""
    for name, test, weights in contrasts:
        sidecar = contrast_sidecar(cell, name)
        assert sidecar["Contrast"]["Test"] == test
        assert sidecar["Contrast"]["Columns"] == list(cell.table.columns)
        np.testing.assert_allclose(np.asarray(sidecar["Contrast"]["Weights"], float), np.asarray(weights, float),
                                   rtol=0, atol=1e-12, err_msg=name)


def unit(columns, name, weight=1.0):
    vector = np.zeros(len(columns))
    vector[list(columns).index(name)] = weight
    return vector


def subject_columns(subjects, rows):
    return {f"sub-{s}": (rows["subject"] == s).to_numpy(float) for s in sorted(subjects)}


# --------------------------------------------------------------------------
# Expected designs, by hand
# --------------------------------------------------------------------------
def expect_one_sample(truth, cell):
    X = pd.DataFrame({"intercept": np.ones(len(cell.rows))})
    return X, [("intercept", "t", [1.0])]


def expect_two_sample(truth, cell):
    group = read_participants(truth["root"]).loc[cell.rows["subject"], "group"].to_numpy()
    X = pd.DataFrame({"group.control": (group == "control").astype(float),
                      "group.patient": (group == "patient").astype(float)})
    return X, [("patient-control", "t", [-1.0, 1.0])]


def expect_paired(truth, cell):
    rows = cell.rows
    X = pd.DataFrame({"IniFF": (rows["desc"] == "IniFF").to_numpy(float),
                      "ImmFF": (rows["desc"] == "ImmFF").to_numpy(float),
                      **subject_columns(truth["subjects"], rows)})
    return X, [("IniFF-ImmFF", "t", unit(X.columns, "IniFF") - unit(X.columns, "ImmFF"))]


def expect_regression(truth, cell):
    p = read_participants(truth["root"]).loc[cell.rows["subject"]]
    age = p["age"].to_numpy(float)
    X = pd.DataFrame({
        "intercept": np.ones(len(p)),
        "age": age - age.mean(),  # mean over the subjects in the model
        "sex.M": (p["sex"] == "M").to_numpy(float),
        "site.B": (p["site"] == "B").to_numpy(float),
        "site.C": (p["site"] == "C").to_numpy(float),
    })
    names = {"intercept": "intercept", "age": "age", "sex.M": "sex.M", "site.B": "site.B", "site.C": "site.C"}
    return X, [(n, "t", unit(X.columns, c)) for n, c in names.items()]


def expect_rm_anova(truth, cell):
    rows = cell.rows
    X = pd.DataFrame({**{c: (rows["desc"] == c).to_numpy(float) for c in CONDITIONS},
                      **subject_columns(truth["subjects"], rows)})
    pad = np.zeros(len(truth["subjects"]))
    return X, [("interaction", "F", np.hstack([INTERACTION, np.vstack([pad, pad])])),
               ("FacesScrambled", "t", np.concatenate([FACES_SCRAMBLED, pad]))]


DESIGNS = {
    "one-sample": dict(
        dataset="nilearn_dataset", groups=[{"contrast": "motor"}, {"contrast": "language"}],
        expect=expect_one_sample, n_rows=16,
        short=[],
        model=model_document({"GroupBy": ["contrast"], "Model": {"Type": "glm", "X": [1]},
                              "DummyContrasts": {"Contrasts": [1], "Test": "t"}}),
    ),
    "two-sample": dict(
        dataset="nilearn_dataset", groups=[{"contrast": "motor"}, {"contrast": "language"}],
        expect=expect_two_sample, n_rows=16,
        short=["--two-sample", "group"],
        model=model_document({
            "GroupBy": ["contrast"],
            "Transformations": {"Transformer": TRANSFORMER, "Instructions": [{"Name": "Factor", "Input": ["group"]}]},
            "Model": {"Type": "glm", "X": ["group.control", "group.patient"]},
            "Contrasts": [{"Name": "patient-control", "ConditionList": ["group.control", "group.patient"],
                           "Weights": [-1, 1], "Test": "t"}],
        }),
    ),
    "paired": dict(
        dataset="seed004_dataset", groups=[{}], expect=expect_paired, n_rows=32,
        short=["--paired", "desc=IniFF,ImmFF"],
        model=model_document({
            "Model": {"Type": "glm", "X": ["IniFF", "ImmFF", "subject"]},
            "Contrasts": [{"Name": "IniFF-ImmFF", "ConditionList": ["IniFF", "ImmFF"], "Weights": [1, -1], "Test": "t"}],
        }, inputs={"desc": ["IniFF", "ImmFF"]}),
    ),
    "regression": dict(
        dataset="nilearn_dataset", groups=[{}], expect=expect_regression, n_rows=16,
        short=["--covariates", "age", "sex", "site", "--demean", "--filter", "contrast=motor"],
        model=model_document({
            "Transformations": {"Transformer": TRANSFORMER, "Instructions": [
                {"Name": "Demean", "Input": ["age"]},
                {"Name": "Factor", "Input": ["sex", "site"], "Constraint": "drop_one"},
            ]},
            "Model": {"Type": "glm", "X": [1, "age", "sex.M", "site.B", "site.C"]},
            "DummyContrasts": {"Test": "t"},
        }, inputs={"contrast": "motor"}),
    ),
    "rm-anova": dict(
        dataset="seed004_dataset", groups=[{}], expect=expect_rm_anova, n_rows=144,
        short=["--rm-anova", "desc=" + ",".join(CONDITIONS), "--contrast", INTERACTION_OPTION,
               "--contrast", FACES_SCRAMBLED_OPTION],
        model=model_document({
            "Model": {"Type": "glm", "X": [*CONDITIONS, "subject"]},
            "Contrasts": [{"Name": "interaction", "ConditionList": CONDITIONS, "Weights": INTERACTION.tolist(),
                           "Test": "F"},
                          {"Name": "FacesScrambled", "ConditionList": CONDITIONS, "Weights": FACES_SCRAMBLED.tolist(),
                           "Test": "t"}],
        }),
    ),
}


@pytest.fixture(scope="module")
def run_design(request, run_cli, tmp_path_factory):
    """``run_design(name, variant)`` -> (truth, output dir); each run once per module."""
    cache = {}

    def run(name, variant, *, design=None, dataset=None, extra=()):
        key = (name, variant)
        if key not in cache:
            spec = design or DESIGNS[name]
            truth = request.getfixturevalue(dataset or spec["dataset"])
            folder = tmp_path_factory.mktemp(f"design-{name}-{variant}")
            if variant == "short":
                args = list(spec["short"])
            else:
                model = folder / "model_smdl.json"
                model.write_text(json.dumps(spec["model"], indent=2))
                args = ["--model", model]
            out = folder / "out"
            code = run_cli([truth["root"], out, "group", "--quiet", "--height-control", "none", *args, *extra])
            assert code == 0, f"bids_group_app exited with {code} for {name}/{variant}"
            cache[key] = (truth, out)
        return cache[key]

    return run


# --------------------------------------------------------------------------
# Short options and their JSON equivalents
# --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["short", "model"])
@pytest.mark.parametrize("name", list(DESIGNS))
def test_design_matrix_is_the_hand_built_one(run_design, name, variant):
    spec = DESIGNS[name]
    truth, out = run_design(name, variant)
    assert len(cells(out)) == len(spec["groups"])
    for group in spec["groups"]:
        cell = cell_for(out, **group)
        assert len(cell.rows) == spec["n_rows"]
        # the right maps: every subject with maps (not the participants.tsv-only one)
        assert set(cell.rows["subject"]) == set(truth["subjects"])
        if "contrast" in group:
            assert set(cell.rows["contrast"]) == {group["contrast"]}
        expected, contrasts = spec["expect"](truth, cell)
        assert_design(cell, expected)
        assert_contrasts(cell, contrasts)


def test_design_rows_are_one_per_subject_and_condition(run_design):
    for name, conditions in (("paired", ["IniFF", "ImmFF"]), ("rm-anova", CONDITIONS)):
        truth, out = run_design(name, "short")
        [cell] = cells(out)
        pairs = set(zip(cell.rows["subject"], cell.rows["desc"]))
        assert pairs == {(s, c) for s in truth["subjects"] for c in conditions}
        assert len(cell.rows) == len(pairs)


def test_demean_uses_only_the_subjects_in_the_model(run_design):
    """Guard: the participants.tsv-only subject would shift the mean."""
    truth, out = run_design("regression", "short")
    [cell] = cells(out)
    p = read_participants(truth["root"])
    assert truth["participant_without_maps"] in p.index
    wrong = p.loc[cell.rows["subject"], "age"].to_numpy(float) - p["age"].mean()
    assert np.abs(cell.table["age"].to_numpy() - wrong).max() > 1e-3
    assert abs(cell.table["age"].mean()) < 1e-10


def test_rm_anova_default_contrast_is_the_main_effect(run_design, seed004_dataset, run_cli, tmp_path):
    """Without --contrast, --rm-anova tests the main effect of the entity (F, 8 rows)."""
    out = tmp_path / "out"
    assert run_cli([seed004_dataset["root"], out, "group", "--quiet", "--height-control", "none",
                "--rm-anova", "desc=" + ",".join(CONDITIONS)]) == 0
    [cell] = cells(out)
    expected, _ = expect_rm_anova(seed004_dataset, cell)  # the design does not depend on the contrasts
    assert_design(cell, expected)
    sidecars = [json.loads(p.read_text()) for p in cell.dir.glob(f"{cell.stem}contrast-*_stat-F_statmap.json")]
    assert len(sidecars) == 1
    weights = np.asarray(sidecars[0]["Contrast"]["Weights"], float)
    assert sidecars[0]["NumeratorDegreesOfFreedom"] == len(CONDITIONS) - 1
    n_cond = len(CONDITIONS)
    assert weights.shape == (n_cond - 1, expected.shape[1])
    assert not np.any(weights[:, n_cond:])  # nothing on the subject columns
    # its rows span exactly the differences between conditions
    differences = np.eye(n_cond)[:-1] - np.eye(n_cond)[1:]
    assert np.linalg.matrix_rank(weights[:, :n_cond]) == n_cond - 1
    assert np.linalg.matrix_rank(np.vstack([weights[:, :n_cond], differences])) == n_cond - 1


# --------------------------------------------------------------------------
# BIDS Stats Models features: transformations, filters, GroupBy, contrasts
# --------------------------------------------------------------------------
PATIENTS_MODEL = model_document({
    "GroupBy": ["contrast"],
    "Filter": {"group": "patient"},
    "Transformations": {"Transformer": TRANSFORMER, "Instructions": [
        {"Name": "Factor", "Input": ["site"]},
        {"Name": "Scale", "Input": ["age"], "Output": ["age_z"]},
        {"Name": "Replace", "Input": ["sex"], "Output": ["sex_pm"], "Replace": {"F": -1, "M": 1}},
    ]},
    "Model": {"Type": "glm", "X": ["site.A", "site.B", "site.C", "age_z", "sex_pm"]},
    "DummyContrasts": {"Contrasts": ["age_z"], "Test": "t"},
    "Contrasts": [
        {"Name": "siteB-siteA", "ConditionList": ["site.A", "site.B"], "Weights": [-1, 1], "Test": "t"},
        {"Name": "sites", "ConditionList": ["site.A", "site.B", "site.C"],
         "Weights": [[1, -1, 0], [0, 1, -1]], "Test": "F"},
    ],
}, name="patients")


def test_model_node_filter_factor_scale_replace(run_design):
    truth, out = run_design("patients", "model", design={"model": PATIENTS_MODEL, "dataset": "nilearn_dataset"})
    p = read_participants(truth["root"])
    patients = sorted(p.index[(p["group"] == "patient") & p.index.isin(truth["subjects"])])
    assert 4 <= len(patients) < len(truth["subjects"])
    assert len(cells(out)) == 2
    for contrast in ("motor", "language"):
        cell = cell_for(out, contrast=contrast)
        assert sorted(cell.rows["subject"]) == patients
        assert sorted(cell.sidecar["Subjects"]) == patients
        rows = p.loc[cell.rows["subject"]]
        age = rows["age"].to_numpy(float)
        X = pd.DataFrame({
            **{f"site.{s}": (rows["site"] == s).to_numpy(float) for s in ("A", "B", "C")},
            "age_z": (age - age.mean()) / age.std(ddof=1),  # scaled over the patients only
            "sex_pm": np.where(rows["sex"] == "M", 1.0, -1.0),
        })
        assert_design(cell, X)
        assert_contrasts(cell, [
            ("age_z", "t", unit(X.columns, "age_z")),
            ("siteB-siteA", "t", unit(X.columns, "site.B") - unit(X.columns, "site.A")),
            ("sites", "F", [[1, -1, 0, 0, 0], [0, 1, -1, 0, 0]]),
        ])


CONTROLS_MODEL = model_document(
    {
        "GroupBy": ["contrast"],
        "Transformations": {"Transformer": TRANSFORMER, "Instructions": [
            # fill n/a with 0 the PyBIDS way (Replace cannot match n/a there)
            {"Name": "Scale", "Input": ["score"], "Demean": False, "Rescale": False, "ReplaceNA": "before"},
            {"Name": "Demean", "Input": ["age", "score"]},
        ]},
        "Model": {"Type": "glm", "X": [1, "age", "score"]},
        "DummyContrasts": True,
        "Contrasts": [{"Name": "ageOrScore", "ConditionList": ["age", "score"],
                       "Weights": [[1, 0], [0, 1]], "Test": "F"}],
    },
    name="controls",
    extra_nodes=[{"Level": "Subject", "Name": "subjectLevel", "GroupBy": ["subject", "contrast"],
                  "Model": {"Type": "glm", "X": [1]}, "DummyContrasts": {"Test": "t"}}],
    edges=[{"Source": "subjectLevel", "Destination": "controls", "Filter": {"group": ["control"]}}],
)


def test_model_edge_filter_replace_na_demean_dummy_contrasts(run_design):
    truth, out = run_design("controls", "model", design={"model": CONTROLS_MODEL, "dataset": "nilearn_dataset"})
    p = read_participants(truth["root"])
    controls = sorted(p.index[(p["group"] == "control") & p.index.isin(truth["subjects"])])
    # a control with a missing score is kept: Scale's ReplaceNA fills it in with 0
    assert set(truth["missing_score_subjects"]) & set(controls)
    for contrast in ("motor", "language"):
        cell = cell_for(out, contrast=contrast)
        assert sorted(cell.rows["subject"]) == controls
        assert cell.sidecar["DroppedSubjects"] == []
        rows = p.loc[cell.rows["subject"]]
        age = rows["age"].to_numpy(float)
        score = rows["score"].fillna(0.0).to_numpy(float)
        X = pd.DataFrame({"intercept": np.ones(len(rows)), "age": age - age.mean(), "score": score - score.mean()})
        assert_design(cell, X)
        assert_contrasts(cell, [
            ("intercept", "t", [1, 0, 0]),
            ("age", "t", [0, 1, 0]),
            ("score", "t", [0, 0, 1]),
            ("ageOrScore", "F", [[0, 1, 0], [0, 0, 1]]),
        ])


def test_model_group_by_participants_column(run_design):
    """GroupBy a participants.tsv column: one one-sample model per group."""
    model = model_document({"GroupBy": ["contrast", "group"], "Model": {"Type": "glm", "X": [1]},
                            "DummyContrasts": {"Test": "t"}}, inputs={"contrast": ["motor"]}, name="byGroup")
    truth, out = run_design("by-group", "model", design={"model": model, "dataset": "nilearn_dataset"})
    p = read_participants(truth["root"]).loc[truth["subjects"]]
    assert len(cells(out)) == 2
    for group in ("control", "patient"):
        cell = cell_for(out, contrast="motor", group=group)
        assert sorted(cell.rows["subject"]) == sorted(p.index[p["group"] == group])
        assert_design(cell, pd.DataFrame({"intercept": np.ones(len(cell.rows))}))
        assert_contrasts(cell, [("intercept", "t", [1.0])])


# --------------------------------------------------------------------------
# Short-option combinations
# --------------------------------------------------------------------------
def test_participant_label_subset_demeans_over_the_subset(run_design):
    labels = ["01", "02", "03", "05", "06", "07", "08", "09"]
    design = {"short": ["--covariates", "age", "--demean", "--filter", "contrast=motor", "--participant-label", *labels]}
    truth, out = run_design("subset", "short", design=design, dataset="nilearn_dataset")
    [cell] = cells(out)
    assert sorted(cell.rows["subject"]) == labels
    age = read_participants(truth["root"]).loc[cell.rows["subject"], "age"].to_numpy(float)
    expected = pd.DataFrame({"intercept": np.ones(len(age)), "age": age - age.mean()})
    assert_design(cell, expected)
    assert_contrasts(cell, [("intercept", "t", [1, 0]), ("age", "t", [0, 1])])


def test_two_sample_with_covariates(run_design):
    """--two-sample group --covariates age --demean: an ANCOVA with cell means and a demeaned age."""
    design = {"short": ["--two-sample", "group", "--covariates", "age", "--demean", "--filter", "contrast=motor"]}
    truth, out = run_design("two-sample-covariates", "short", design=design, dataset="nilearn_dataset")
    [cell] = cells(out)
    p = read_participants(truth["root"]).loc[cell.rows["subject"]]
    age = p["age"].to_numpy(float)
    expected = pd.DataFrame({"group.control": (p["group"] == "control").to_numpy(float),
                             "group.patient": (p["group"] == "patient").to_numpy(float),
                             "age": age - age.mean()})
    assert_design(cell, expected)
    assert_contrasts(cell, [("patient-control", "t", [-1, 1, 0]), ("age", "t", [0, 0, 1])])


# --------------------------------------------------------------------------
# Model.Formula (Wilkinson formulas, evaluated by formulaic as PyBIDS does)
# --------------------------------------------------------------------------
import logging  # noqa: E402

import formulaic  # noqa: E402
from bids.modeling.model_spec import GLMMSpec  # noqa: E402

from bids_group_app.errors import DataError, UsageError  # noqa: E402
from bids_group_app.model.design import build_design  # noqa: E402
from bids_group_app.model.spec import parse_model  # noqa: E402

FORMULAIC_1 = int(formulaic.__version__.split(".")[0]) >= 1
AGE = np.array([23.0, 31, 45, 52, 38, 61, 29, 47, 35, 56])
SEX = np.array(list("MFMFFMMFMF"))
GROUP = np.array(["control", "patient", "sibling", "patient", "control", "sibling", "patient", "control",
                  "sibling", "patient"])


def _table():
    return pd.DataFrame({"path": [f"sub-{i:02d}.nii.gz" for i in range(1, 11)],
                         "subject": [f"{i:02d}" for i in range(1, 11)],
                         "age": AGE, "sex": SEX, "group": GROUP})


def _formula_node(x, formula=None, **node):
    model = {"Type": "glm", "X": x, **({"Formula": formula} if formula else {})}
    document = {"Name": "m", "BIDSModelVersion": "1.0.0",
                "Nodes": [{"Level": "Dataset", "Name": "m", "Model": model, **node}]}
    if "Contrasts" not in node and "DummyContrasts" not in node:
        document["Nodes"][0]["DummyContrasts"] = {"Test": "t"}
    return parse_model(document).nodes[0]


def _pybids_columns(x, formula):
    """Column names PyBIDS gives the same Formula over the same Model.X data."""
    data = _table().drop(columns=["path", "subject"])
    if 1 in x:
        data.insert(0, "intercept", 1)
    data = data[["intercept" if v == 1 else v for v in x]]
    return list(GLMMSpec.from_df(data, {"X": x, "Formula": formula}).X.columns)


FORMULAS = {
    # formula: (Model.X, {reading of the column names: numpy column})
    "1 + age + C(sex)": ([1, "age", "sex"], {"Intercept": np.ones(10), "age": AGE, "C(sex)[T.M]": SEX == "M"}),
    "1 + age:sex": ([1, "age", "sex"], {"Intercept": np.ones(10), "age|sex=F": AGE * (SEX == "F"),
                                        "age|sex=M": AGE * (SEX == "M")}),
    "1 + age*group": ([1, "age", "group"], {
        "Intercept": np.ones(10), "age": AGE,
        "group[T.patient]": GROUP == "patient", "group[T.sibling]": GROUP == "sibling",
        "age|group=patient": AGE * (GROUP == "patient"), "age|group=sibling": AGE * (GROUP == "sibling")}),
    "0 + C(group)": (["group"], {f"C(group)[{'' if FORMULAIC_1 else 'T.'}{g}]": GROUP == g
                                 for g in ("control", "patient", "sibling")}),
    "1 + C(group, contr.treatment('sibling'))": ([1, "group"], {
        "Intercept": np.ones(10),
        "C(group, contr.treatment('sibling'))[T.control]": GROUP == "control",
        "C(group, contr.treatment('sibling'))[T.patient]": GROUP == "patient"}),
}
if FORMULAIC_1:  # patsy's Treatment(): formulaic >= 1.0 only
    FORMULAS["1 + C(group, Treatment('control'))"] = ([1, "group"], {
        "Intercept": np.ones(10),
        "C(group, Treatment('control'))[T.patient]": GROUP == "patient",
        "C(group, Treatment('control'))[T.sibling]": GROUP == "sibling"})


def _interaction_name(reading, columns):
    """The design column for ``age|sex=F`` (formulaic 1.x: ``age:sex[F]``, 0.x: ``sex[T.F]:age``)."""
    if "|" not in reading:
        return reading
    var, level = reading.split("|")
    factor, value = level.split("=")
    (hit,) = [c for c in columns if ":" in c and var in c.split(":") and
              any(p in (f"{factor}[{value}]", f"{factor}[T.{value}]") for p in c.split(":"))]
    return hit


@pytest.mark.parametrize("formula", list(FORMULAS))
def test_formula_design_is_the_numpy_one_with_pybids_column_names(formula):
    x, expected = FORMULAS[formula]
    design = build_design(_table(), _formula_node(x, formula), entities=["subject"])
    assert list(design.matrix.columns) == _pybids_columns(x, formula)
    assert len(design.matrix.columns) == len(expected)
    for reading, values in expected.items():
        column = _interaction_name(reading, design.matrix.columns)
        np.testing.assert_array_equal(design.matrix[column].to_numpy(), np.asarray(values, float), err_msg=column)
    assert design.rank == np.linalg.matrix_rank(np.column_stack(list(expected.values())).astype(float))


def test_formula_model_equals_the_equivalent_x_model():
    instructions = {"Transformer": "pybids-transforms-v1",
                    "Instructions": [{"Name": "Factor", "Input": ["sex"], "Constraint": "drop_one"}]}
    by_x = build_design(_table(), _formula_node([1, "age", "sex.M"], Transformations=instructions), ["subject"])
    by_formula = build_design(_table(), _formula_node([1, "age", "sex"], "1 + age + C(sex)"), ["subject"])
    np.testing.assert_array_equal(by_formula.matrix[["Intercept", "age", "C(sex)[T.M]"]].to_numpy(),
                                  by_x.matrix[["intercept", "age", "sex.M"]].to_numpy())
    assert (by_formula.rank, by_formula.dof) == (by_x.rank, by_x.dof)


def test_formula_contrasts_name_formula_columns_and_1_is_the_intercept():
    node = _formula_node([1, "age", "sex"], "1 + age + C(sex)", Contrasts=[
        {"Name": "mean", "ConditionList": [1], "Weights": [1], "Test": "t"},
        {"Name": "MvsF", "ConditionList": ["C(sex)[T.M]"], "Weights": [1], "Test": "t"}])
    design = build_design(_table(), node, entities=["subject"])
    weights = {c.name: c.vector for c in design.contrasts}
    np.testing.assert_array_equal(weights["mean"], unit(design.matrix.columns, "Intercept"))
    np.testing.assert_array_equal(weights["MvsF"], unit(design.matrix.columns, "C(sex)[T.M]"))


def test_formula_drops_maps_with_missing_values_first():
    table = _table()
    table.loc[2, "sex"] = np.nan
    table.loc[5, "age"] = np.nan
    design = build_design(table, _formula_node([1, "age", "sex"], "1 + age + C(sex)"), entities=["subject"])
    assert sorted(d["subject"] for d in design.dropped) == ["03", "06"] and len(design.matrix) == 8


@pytest.mark.parametrize("formula, error, fragment", [
    ("1 + weight", UsageError, r"Model\.Formula '1 \+ weight'.*weight"),  # not a Model.X column
    ("1 + np.log(age - 40)", DataError, r"Model\.Formula.*not finite"),  # NaN for ages under 40
])
def test_formula_errors_name_the_formula(formula, error, fragment):
    with pytest.raises(error, match=fragment):
        build_design(_table(), _formula_node([1, "age", "sex"], formula), entities=["subject"])


def test_categorical_x_without_formula_still_needs_factor():
    with pytest.raises(DataError, match="encode it with a Factor"):
        build_design(_table(), _formula_node([1, "sex"]), entities=["subject"])


# --------------------------------------------------------------------------
# Contrasts naming absent columns: dropped with a warning (as PyBIDS drops them)
# --------------------------------------------------------------------------
def test_contrasts_naming_absent_columns_are_dropped_with_a_warning(caplog):
    node = _formula_node([1, "age"], Contrasts=[
        {"Name": "ageEffect", "ConditionList": ["age"], "Weights": [1], "Test": "t"},
        {"Name": "ghost", "ConditionList": ["age", "weight"], "Weights": [1, -1], "Test": "t"}],
        DummyContrasts={"Contrasts": [1, "height"], "Test": "t"})
    with caplog.at_level(logging.WARNING):
        design = build_design(_table(), node, entities=["subject"])
    assert [c.name for c in design.contrasts] == ["intercept", "ageEffect"]
    assert "ghost" in caplog.text and "weight" in caplog.text and "height" in caplog.text


def test_no_contrast_left_is_a_data_error():
    node = _formula_node([1, "age"], Contrasts=[
        {"Name": "ghost", "ConditionList": ["weight"], "Weights": [1], "Test": "t"}])
    with pytest.raises(DataError, match="ghost.*weight"):
        build_design(_table(), node, entities=["subject"])


def test_dummy_f_contrast():
    node = _formula_node([1, "age"], DummyContrasts={"Contrasts": ["age"], "Test": "F"})
    (contrast,) = build_design(_table(), node, entities=["subject"]).contrasts
    assert contrast.test == "F" and contrast.weights.shape == (1, 2)
