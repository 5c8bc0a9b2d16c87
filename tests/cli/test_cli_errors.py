"""CLI error handling: BIDS execution-spec exit codes, one-line messages, no partial outputs.

Exit codes: 17 unknown analysis level, 18 filters selected no file, 64 usage
error, 65 bad data, 66 required input missing, 73 output cannot be created.
Every failure must print one ``bids_group_app: error: ...`` line on stderr
(no traceback unless ``-v``), leave no ``*_statmap.nii.gz`` and no staging
folder under OUTPUT_DIR, write nothing outside OUTPUT_DIR and leave BIDS_DIR
untouched.

Most cases run in-process (``bids_group_app.cli.run.main``); a subset runs as
real subprocesses, launched in parallel by one module fixture, to check the
process exit status and the real stderr; among them, failures that only a
process shows (a file size limit while the PyBIDS database is written), and
one run that must succeed (300-character model, node and contrast names:
file names are capped, sidecars keep the names whole).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from bids_group_app.cli.run import main
from bids_group_app.example_data import make_example_dataset

N_SUBJECTS = 6
DERIV = Path("derivatives") / "nilearn_glm"
CORRUPT_NAME = "sub-03_task-localizer_contrast-motor_stat-effect_statmap.nii.gz"
RUN1_NAME = "sub-02_task-localizer_contrast-motor_stat-effect_statmap.nii.gz"
RUN2_NAME = "sub-02_task-localizer_run-2_contrast-motor_stat-effect_statmap.nii.gz"
ERROR_PREFIX = "bids_group_app: error: "
LOG_LINE = re.compile(r"^\d{2}:\d{2}:\d{2} \[[A-Z]+\] ")  # cli.run's logging format
STAGING = ".bids_group_app-staging-*"
LONG = "a" * 300  # a model, node and contrast name longer than a file name may be

def _contrast_model(contrasts, dummy=None, **node):
    """A one-node regression model on age with these Contrasts (and node fields, Model.Software)."""
    software = node.pop("Software", None)
    model = {"Type": "glm", "X": [1, "age"], **({"Software": software} if software else {})}
    body = {"Level": "Dataset", "Name": "regression", "GroupBy": ["contrast"], "Model": model,
            "Contrasts": contrasts, **node}
    if dummy is not None:
        body["DummyContrasts"] = dummy
    elif contrasts == []:
        body["DummyContrasts"] = {"Test": "t"}
    return {"Name": "badValues", "BIDSModelVersion": "1.0.0", "Nodes": [body]}


MODELS = {
    "invalid_json": '{"Name": "broken", "Nodes": [\n',
    "no_nodes": {"Name": "noNodes", "BIDSModelVersion": "1.0.0"},
    "no_dataset_node": {
        "Name": "subjectOnly", "BIDSModelVersion": "1.0.0",
        "Nodes": [{"Level": "Subject", "Name": "subjectLevel", "Model": {"Type": "glm", "X": [1]},
                   "DummyContrasts": {"Test": "t"}}],
    },
    # age2 is a copy of age: the age column is confounded, a contrast on it is not estimable
    "collinear": {
        "Name": "collinear", "BIDSModelVersion": "1.0.0",
        "Nodes": [{
            "Level": "Dataset", "Name": "regression", "GroupBy": ["contrast"],
            "Transformations": {"Transformer": "pybids-transforms-v1",
                                "Instructions": [{"Name": "Copy", "Input": ["age"], "Output": ["age2"]}]},
            "Model": {"Type": "glm", "X": [1, "age", "age2"]},
            "Contrasts": [{"Name": "ageEffect", "ConditionList": ["age"], "Weights": [1], "Test": "t"}],
        }],
    },
    # a categorical column used directly as a design column (no Factor)
    "sex_in_x": {
        "Name": "sexInX", "BIDSModelVersion": "1.0.0",
        "Nodes": [{"Level": "Dataset", "Name": "regression", "GroupBy": ["contrast"],
                   "Model": {"Type": "glm", "X": [1, "sex"]}, "DummyContrasts": {"Test": "t"}}],
    },
    # numbers that are not finite: Python's json reads NaN and 1e999 (inf)
    "nan_weight": json.dumps(_contrast_model([{"Name": "nanWeight", "ConditionList": ["age"], "Weights": [7.5], "Test": "t"}]))
    .replace("7.5", "NaN"),
    "inf_weight": json.dumps(_contrast_model([{"Name": "infWeight", "ConditionList": ["age"], "Weights": [7.5], "Test": "t"}]))
    .replace("7.5", "1e999"),
    "huge_int_weight": json.dumps(_contrast_model([{"Name": "hugeWeight", "ConditionList": ["age"], "Weights": [10**400], "Test": "t"}])),
    "nan_setting": json.dumps(_contrast_model([], Software={"bids_group_app": {"Alpha": 7.5}})).replace("7.5", "NaN"),
    "huge_int_setting": _contrast_model([], Software={"bids_group_app": {"Alpha": 10**400}}),
    # two contrasts of one name; a contrast named like a DummyContrast
    "duplicate_contrast": _contrast_model([{"Name": "ageEffect", "ConditionList": ["age"], "Weights": [1], "Test": "t"},
                                           {"Name": "ageEffect", "ConditionList": ["age"], "Weights": [-1], "Test": "t"}]),
    "contrast_named_like_dummy": _contrast_model([{"Name": "age", "ConditionList": ["age"], "Weights": [-1], "Test": "t"}],
                                                 dummy={"Test": "t"}),
    # fields of the wrong type
    "transformer_number": _contrast_model([], Transformations={"Transformer": 5, "Instructions": []}),
    "input_number": _contrast_model([], Transformations={"Transformer": "pybids-transforms-v1",
                                                         "Instructions": [{"Name": "Demean", "Input": 5}]}),
    "constraint_number": _contrast_model([], Transformations={"Transformer": "pybids-transforms-v1",
                                                              "Instructions": [{"Name": "Factor", "Input": ["sex"], "Constraint": 3}]}),
    "contrasts_number": _contrast_model(5),
    "deep": "[" * 100_000 + "]" * 100_000,
    # names of 300 characters: file names are capped, sidecars keep them whole
    "long_names": {
        "Name": "M" + LONG, "BIDSModelVersion": "1.0.0",
        "Nodes": [{"Level": "Dataset", "Name": "N" + LONG, "GroupBy": ["contrast"],
                   "Model": {"Type": "glm", "X": [1, "age"]},
                   "Contrasts": [{"Name": "C" + LONG, "ConditionList": ["age"], "Weights": [1], "Test": "t"}]}],
    },
    # Demean needs numbers
    "demean_sex": {
        "Name": "demeanSex", "BIDSModelVersion": "1.0.0",
        "Nodes": [{"Level": "Dataset", "Name": "regression", "GroupBy": ["contrast"],
                   "Transformations": {"Transformer": "pybids-transforms-v1",
                                       "Instructions": [{"Name": "Demean", "Input": ["sex"]}]},
                   "Model": {"Type": "glm", "X": [1, "age"]}, "DummyContrasts": {"Test": "t"}}],
    },
}

# issue 10: keys of the spec that a Dataset node does not run, and keys that are not in the spec
MODELS.update({
    "variance_components": {
        "Name": "varianceComponents", "BIDSModelVersion": "1.0.0",
        "Nodes": [{"Level": "Dataset", "Name": "regression", "GroupBy": ["contrast"],
                   "Model": {"Type": "glm", "X": [1, "age"],
                             "VarianceComponents": [{"Name": "subject", "LevelsFrom": "subject"}]},
                   "DummyContrasts": {"Test": "t"}}],
    },
    "fema_covariate": _contrast_model([{"Name": "fixedAge", "ConditionList": ["age"], "Weights": [1], "Test": "FEMA"}]),
    "formula_typo": {
        "Name": "formulaTypo", "BIDSModelVersion": "1.0.0",
        "Nodes": [{"Level": "Dataset", "Name": "regression", "GroupBy": ["contrast"],
                   "Model": {"Type": "glm", "X": [1, "age"], "Formulae": "1 + age"},
                   "DummyContrasts": {"Test": "t"}}],
    },
})


# --------------------------------------------------------------------------
# Fixtures (module-scoped; datasets are read-only for the tests)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs_root(tmp_path_factory):
    """Folder holding every input of this module: datasets and model files.

    ``bids``: a 6-subject nilearn-layout dataset (no participant without maps,
    so no warning is logged); ``corrupt``: a copy with a truncated ``.nii.gz``
    (in the second GroupBy cell, so the first cell is staged before the
    failure); ``run2``: a copy with an extra run-2 map for sub-02/motor;
    ``all_nan``/``all_zero``: copies where CORRUPT_NAME holds only NaN / only
    zeros; ``map_folder``: a copy where CORRUPT_NAME is a folder; ``ten``: a
    10-subject dataset (a regression over 10 maps has too many permutations
    to enumerate);
    ``models/``: model JSON files.
    """
    root = tmp_path_factory.mktemp("cli-errors-inputs")
    bids = root / "bids"
    make_example_dataset(bids, "nilearn", n_subjects=N_SUBJECTS, extra_participant=False)

    corrupt = root / "corrupt"
    shutil.copytree(bids, corrupt)
    target = corrupt / DERIV / "sub-03" / CORRUPT_NAME
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])

    run2 = root / "run2"
    shutil.copytree(bids, run2)
    sub_dir = run2 / DERIV / "sub-02"
    shutil.copy2(sub_dir / RUN1_NAME, sub_dir / RUN2_NAME)

    _bad_participants(root, bids)
    for name, value in (("all_nan", np.nan), ("all_zero", 0.0)):
        _constant_map(root / name, bids, value)
    make_example_dataset(root / "ten", "nilearn", n_subjects=10, extra_participant=False)
    folder = root / "map_folder"
    shutil.copytree(bids, folder)
    (folder / DERIV / "sub-03" / CORRUPT_NAME).unlink()
    (folder / DERIV / "sub-03" / CORRUPT_NAME).mkdir()
    for name, value in (("zero_affine", 0.0), ("nan_affine", np.nan)):
        _bad_affine(root / name, bids, value)

    models = root / "models"
    models.mkdir()
    for name, content in MODELS.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=2)
        (models / f"{name}.json").write_text(text)
    return root


def _bad_participants(root, bids):
    """Copies of ``bids`` whose participants.tsv is 0 bytes, a header only, or has an ``inf`` age."""
    text = (bids / "participants.tsv").read_text()
    header, first, *rest = text.splitlines(keepends=True)
    age = header.rstrip("\n").split("\t").index("age")
    cells = first.rstrip("\n").split("\t")
    cells[age] = "inf"
    for name, content in (("empty_tsv", ""), ("header_tsv", header),
                          ("inf_age", "".join([header, "\t".join(cells) + "\n", *rest]))):
        shutil.copytree(bids, root / name)
        (root / name / "participants.tsv").write_text(content)


def _constant_map(target, bids, value):
    """A copy of ``bids`` where CORRUPT_NAME holds ``value`` in every voxel."""
    shutil.copytree(bids, target)
    path = target / DERIV / "sub-03" / CORRUPT_NAME
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.full(img.shape, value, dtype=np.float32), img.affine), path)


def _bad_affine(target, bids, value):
    """A copy of ``bids`` where CORRUPT_NAME's sform is filled with ``value`` (and is the one used)."""
    shutil.copytree(bids, target)
    path = target / DERIV / "sub-03" / CORRUPT_NAME
    img = nib.load(path)
    header = img.header.copy()
    for row in ("srow_x", "srow_y", "srow_z"):
        header[row] = value
    header["sform_code"], header["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header=header), path)


def _context(inputs_root, sandbox):
    """Paths a case needs; ``sandbox`` holds OUTPUT_DIR and a regular file."""
    sandbox.mkdir(parents=True, exist_ok=True)
    regular_file = sandbox / "a_regular_file"
    regular_file.write_text("not a folder\n")
    return SimpleNamespace(
        root=inputs_root,
        bids=inputs_root / "bids",
        corrupt=inputs_root / "corrupt",
        run2=inputs_root / "run2",
        models=inputs_root / "models",
        sandbox=sandbox,
        out=sandbox / "out",
        regular_file=regular_file,
        missing=sandbox / "does-not-exist",
    )


@pytest.fixture
def ctx(inputs_root, tmp_path, monkeypatch):
    """Per-test context; the working directory is the sandbox."""
    context = _context(inputs_root, tmp_path / "sandbox")
    monkeypatch.chdir(context.sandbox)
    return context


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def listing(root, skip=(), hashes=False, include_dirs=True):
    """Recursive listing ``{relpath: (type, size, mtime_ns[, md5])}``.

    ``skip``: folders not descended into (nor listed). Directory entries
    carry their mtime (a file created and deleted inside changes it); the
    root folder itself is listed as ``'.'``.
    """
    root = Path(root)
    skip = {Path(s).resolve() for s in skip}
    entries = {}
    if include_dirs:
        st = root.stat()
        entries["."] = ("d", None, st.st_mtime_ns)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() not in skip)
        for name in dirnames + sorted(filenames):
            path = here / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                if include_dirs:
                    entries[rel] = ("d", None, st.st_mtime_ns)
                continue
            entry = ("f", st.st_size, st.st_mtime_ns)
            if hashes:
                entry += (hashlib.md5(path.read_bytes()).hexdigest(),)
            entries[rel] = entry
    return entries


def run_in_process(capsys, argv):
    """Run the CLI in-process; return (exit code, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv] + ["--no-reports"])  # reports are tested in test_report.py
    return code, capsys.readouterr().err


def check_message(code, err, expected_code, names):
    """Exit code, one error line (the last), no traceback, names present."""
    assert code == expected_code, f"exit {code}, expected {expected_code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    messages = [line for line in lines if not LOG_LINE.match(line)]
    assert len(messages) == 1, f"expected one message line, got:\n{err}"
    message = messages[0]
    assert message.startswith(ERROR_PREFIX), message
    assert lines[-1] == message, f"the error must be the last line:\n{err}"
    for name in names:
        assert str(name) in message, f"{name!r} not named in: {message}"
    return message


def check_clean(output_dir, sandbox, inputs_root, before_inputs, before_sandbox, skip=None):
    """No map or staging folder left; nothing written outside OUTPUT_DIR; inputs untouched.

    ``skip``: folders, OUTPUT_DIR included, the run may write (e.g. ``--bids-database-dir``).
    """
    output_dir = Path(output_dir)
    if output_dir.is_dir() and not output_dir.resolve().is_relative_to(Path(inputs_root).resolve()):
        assert not list(output_dir.rglob("*_statmap.nii.gz")), "a failed run left statistical maps"
    assert not list(Path(sandbox).rglob(STAGING)), "a failed run left a staging folder"
    assert not list(Path(inputs_root).rglob(STAGING))
    assert listing(inputs_root) == before_inputs, "BIDS_DIR / model files were modified"
    after = listing(sandbox, skip=skip or [output_dir])
    # the sandbox folder's own mtime changes when OUTPUT_DIR is created in it
    after.pop(".", None)
    before = {k: v for k, v in before_sandbox.items() if k != "."}
    assert after == before, "the run wrote outside OUTPUT_DIR"


# --------------------------------------------------------------------------
# In-process cases
# --------------------------------------------------------------------------
def _model(c, name):
    return c.models / f"{name}.json"


CASES = [
    # 17: unknown analysis level
    pytest.param(lambda c: [c.bids, c.out, "session"], 17,
                 lambda c: ["'session'", "participant", "group"], id="17-level-session"),
    # 64: the participant level needs --model and takes no group-level option
    pytest.param(lambda c: [c.bids, c.out, "participant"], 64,
                 lambda c: ["participant level needs --model"], id="64-participant-without-model"),
    pytest.param(lambda c: [c.bids, c.out, "participant", "--model", c.bids / "m.json", "--n-perm", "100"], 64,
                 lambda c: ["does not use --n-perm"], id="64-participant-group-option"),
    # 18: filters select no file; the message lists what exists
    pytest.param(lambda c: [c.bids, c.out, "group", "--filter", "contrast=nonexistent"], 18,
                 lambda c: ["nonexistent", "motor", "language"], id="18-filter-contrast"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--participant-label", "99"], 18,
                 lambda c: ["99", "01", "06"], id="18-participant-label"),
    # 64: usage errors
    pytest.param(lambda c: [c.bids, c.out, "group", "--no-such-option"], 64,
                 lambda c: ["--no-such-option"], id="64-unknown-option"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--alpha", "2"], 64,
                 lambda c: ["--alpha", "2"], id="64-alpha-out-of-range"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--contrast", "nameWithoutSpec"], 64,
                 lambda c: ["nameWithoutSpec"], id="64-contrast-no-equals"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--contrast", "c=age +* 2"], 64,
                 lambda c: ["age +* 2"], id="64-contrast-bad-expression"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--contrast", "c=1,2,3"], 64,
                 lambda c: ["intercept"], id="64-contrast-too-many-weights"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--model", _model(c, "invalid_json")], 64,
                 lambda c: ["invalid_json.json", "JSON"], id="64-model-invalid-json"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--model", _model(c, "no_nodes")], 64,
                 lambda c: ["Nodes"], id="64-model-no-nodes"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--model", _model(c, "no_dataset_node")], 64,
                 lambda c: ["Dataset", "Subject"], id="64-model-no-dataset-node"),
    pytest.param(lambda c: [c.bids, c.bids, "group"], 64,
                 lambda c: [], id="64-output-is-bids-dir"),
    # 64: numbers that are not finite, from options or a model file
    *[pytest.param(lambda c, o=option, v=value, e=extra: [c.bids, c.out, "group", f"{o}={v}", *e], 64,
                   lambda c, o=option: [o, "finite"], id=f"64{option}-{value}")
      for option, value, extra in [
          ("--alpha", "nan", []), ("--smoothing-fwhm", "nan", []), ("--smoothing-fwhm", "inf", []),
          ("--tfce-e", "inf", ["--tfce"]), ("--tfce-h", "nan", ["--tfce"]), ("--tfce-e", "-inf", ["--tfce"]),
          ("--fwe-alpha", "nan", ["--n-perm", "10"]), ("--cluster-forming-p", "nan", [])]],
    pytest.param(lambda c: [c.bids, c.out, "group", "--covariates", "age", "--contrast", "big=0,1e999"], 64,
                 lambda c: ["big", "finite"], id="64-contrast-weight-overflows"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--covariates", "age", "--contrast", "big=1" + "0" * 400 + "*age"], 64,
                 lambda c: ["big", "finite"], id="64-contrast-coefficient-overflows"),
    *[pytest.param(lambda c, m=model: [c.bids, c.out, "group", "--model", _model(c, m)], 64,
                   lambda c, n=names: n, id=f"64-model-{model}")
      for model, names in [
          ("nan_weight", ["nanWeight", "finite"]), ("inf_weight", ["infWeight", "finite"]),
          ("huge_int_weight", ["hugeWeight"]), ("nan_setting", ["Alpha", "nan"]), ("huge_int_setting", ["Alpha"]),
          ("duplicate_contrast", ["ageEffect", "more than once"]), ("contrast_named_like_dummy", ["'age'", "DummyContrasts"]),
          ("transformer_number", ["Transformer", "5"]), ("input_number", ["Input", "5"]),
          ("constraint_number", ["Constraint", "3"]), ("contrasts_number", ["Contrasts"]),
          ("deep", ["deep.json", "nested"])]],
    # 65: bad data
    pytest.param(lambda c: [c.root / "zero_affine", c.out, "group"], 65,
                 lambda c: [CORRUPT_NAME, "affine"], id="65-zero-affine"),
    pytest.param(lambda c: [c.root / "nan_affine", c.out, "group"], 65,
                 lambda c: [CORRUPT_NAME, "affine"], id="65-nan-affine"),
    pytest.param(lambda c: [c.root / "empty_tsv", c.out, "group"], 65,
                 lambda c: ["participants.tsv", "empty"], id="65-participants-0-bytes"),
    pytest.param(lambda c: [c.root / "header_tsv", c.out, "group", "--covariates", "age"], 65,
                 lambda c: ["participants.tsv"], id="65-participants-header-only"),
    pytest.param(lambda c: [c.root / "inf_age", c.out, "group", "--covariates", "age"], 65,
                 lambda c: ["participants.tsv", "age", "infinite", "01"], id="65-covariate-inf"),
    pytest.param(lambda c: [c.corrupt, c.out, "group"], 65,
                 lambda c: [CORRUPT_NAME], id="65-corrupt-image"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--model", _model(c, "collinear")], 65,
                 lambda c: ["ageEffect", "estimable"], id="65-non-estimable-contrast"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--covariates", "doesnotexist"], 65,
                 lambda c: ["doesnotexist", "age", "sex", "group", "score"], id="65-covariate-missing"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--model", _model(c, "sex_in_x")], 65,
                 lambda c: ["sex", "F", "M", "Factor"], id="65-categorical-in-X"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--model", _model(c, "demean_sex")], 65,
                 lambda c: ["Demean", "sex"], id="65-demean-categorical"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--participant-label", "01", "02", "--covariates", "age"], 65,
                 lambda c: ["freedom"], id="65-zero-dof"),
    pytest.param(lambda c: [c.run2, c.out, "group"], 65,
                 lambda c: [RUN1_NAME, RUN2_NAME, "run"], id="65-two-runs-per-subject"),
    # 66: required input missing
    pytest.param(lambda c: [c.missing, c.out, "group"], 66,
                 lambda c: [c.missing.name], id="66-bids-dir-missing"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--derivatives", c.missing], 66,
                 lambda c: [c.missing.name], id="66-derivatives-missing"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--mask", c.missing / "mask.nii.gz"], 66,
                 lambda c: ["mask.nii.gz"], id="66-mask-missing"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--bids-filter-file", c.missing / "filters.json"], 66,
                 lambda c: ["filters.json"], id="66-filter-file-missing"),
    # 73: output cannot be created
    pytest.param(lambda c: [c.bids, c.regular_file / "out", "group"], 73,
                 lambda c: [c.regular_file.name], id="73-output-under-regular-file"),
    pytest.param(lambda c: [c.bids, c.out, "group", "--work-dir", c.regular_file / "work"], 73,
                 lambda c: [c.regular_file.name], id="73-work-dir-under-regular-file"),
]


@pytest.mark.parametrize("make_argv, expected, make_names", CASES)
def test_error_exit_code_message_and_no_trace(make_argv, expected, make_names, ctx, capsys):
    argv = make_argv(ctx)
    output_dir = Path(argv[1])
    before_inputs = listing(ctx.root)
    before_sandbox = listing(ctx.sandbox, skip=[output_dir])
    code, err = run_in_process(capsys, argv)
    check_message(code, err, expected, make_names(ctx))
    check_clean(output_dir, ctx.sandbox, ctx.root, before_inputs, before_sandbox)


def test_missing_model_file_is_a_one_line_missing_input_error(ctx, capsys):
    argv = [ctx.bids, ctx.out, "group", "--model", ctx.missing / "model.json"]
    before_inputs, before_sandbox = listing(ctx.root), listing(ctx.sandbox)
    code, err = run_in_process(capsys, argv)
    assert code == 66, err
    check_message(code, err, code, ["model.json"])
    check_clean(ctx.out, ctx.sandbox, ctx.root, before_inputs, before_sandbox)


def test_output_dir_that_is_a_regular_file_fails_cleanly(ctx, capsys):
    before_inputs, before_sandbox = listing(ctx.root), listing(ctx.sandbox)
    code, err = run_in_process(capsys, [ctx.bids, ctx.regular_file, "group"])
    assert code != 0
    check_message(code, err, code, [ctx.regular_file.name])
    assert ctx.regular_file.read_text() == "not a folder\n"
    check_clean(ctx.regular_file, ctx.sandbox, ctx.root, before_inputs, before_sandbox)


def test_output_dir_that_is_a_regular_file_exits_73(ctx, capsys):
    code, err = run_in_process(capsys, [ctx.bids, ctx.regular_file, "group"])
    check_message(code, err, 73, [ctx.regular_file.name])


def test_output_dir_equal_to_input_derivatives_is_refused(ctx, capsys):
    deriv = ctx.bids / DERIV
    before_inputs = listing(ctx.root)
    code, err = run_in_process(capsys, [ctx.bids, deriv, "group"])
    assert code == 64, err
    check_message(code, err, code, ["overlaps the input derivative dataset"])
    assert listing(ctx.root) == before_inputs
    assert not list(ctx.root.rglob(STAGING))


def test_bids_database_dir_not_creatable_exits_73(ctx, capsys):
    before_inputs, before_sandbox = listing(ctx.root), listing(ctx.sandbox)
    argv = [ctx.bids, ctx.out, "group", "--bids-database-dir", ctx.regular_file / "db"]
    code, err = run_in_process(capsys, argv)
    check_message(code, err, 73, [ctx.regular_file.name])
    check_clean(ctx.out, ctx.sandbox, ctx.root, before_inputs, before_sandbox)


def test_failed_runs_leave_a_previous_run_untouched(ctx, capsys):
    code, err = run_in_process(capsys, [ctx.bids, ctx.out, "group"])
    assert code == 0, err
    first = listing(ctx.out, hashes=True, include_dirs=False)
    maps = [p for p in first if p.endswith("_statmap.nii.gz")]
    assert maps, "the successful run wrote no map"
    before_inputs = listing(ctx.root)

    # fails while fitting (the corrupt map is in the second cell: the first one was staged)
    code, err = run_in_process(capsys, [ctx.corrupt, ctx.out, "group"])
    check_message(code, err, 65, [CORRUPT_NAME])
    assert listing(ctx.out, hashes=True, include_dirs=False) == first
    # fails while planning
    code, err = run_in_process(capsys, [ctx.bids, ctx.out, "group", "--covariates", "doesnotexist"])
    check_message(code, err, 65, ["doesnotexist"])
    assert listing(ctx.out, hashes=True, include_dirs=False) == first
    assert not list(ctx.out.rglob(STAGING))
    assert listing(ctx.root) == before_inputs


def test_verbose_error_logs_the_traceback(ctx, capsys, caplog):
    code, err = run_in_process(capsys, [ctx.bids, ctx.out, "group", "--covariates", "doesnotexist", "-v"])
    assert code == 65
    assert err.splitlines()[-1].startswith(ERROR_PREFIX)
    failures = [r for r in caplog.records if r.exc_info]
    assert failures and failures[-1].exc_info[0].__name__ == "DataError"


# --------------------------------------------------------------------------
# Real subprocesses (launched together, in parallel)
# --------------------------------------------------------------------------
def _command():
    script = Path(sys.executable).with_name("bids_group_app")
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "bids_group_app"]


SUBPROCESS_CASES = {
    # id: (argv builder, expected code, names, options)
    "17-level": (lambda c: [c.bids, c.out, "subject"], 17, lambda c: ["'subject'", "participant"], {}),
    "18-filter-quiet": (lambda c: [c.bids, c.out, "group", "--quiet", "--filter", "contrast=nonexistent"], 18,
                        lambda c: ["motor", "language"], {"one_line": True}),
    "64-alpha": (lambda c: [c.bids, c.out, "group", "--alpha", "2"], 64, lambda c: ["--alpha"], {"one_line": True}),
    "64-model-json": (lambda c: [c.bids, c.out, "group", "--model", _model(c, "invalid_json")], 64,
                      lambda c: ["invalid_json.json"], {"python_m": True}),
    "65-corrupt-quiet": (lambda c: [c.corrupt, c.out, "group", "--quiet"], 65,
                         lambda c: [CORRUPT_NAME], {"one_line": True}),
    "66-bids-dir": (lambda c: [c.missing, c.out, "group"], 66, lambda c: [c.missing.name], {"one_line": True}),
    # not --quiet: INFO lines come first, the error is the one message line, and the last
    "73-output": (lambda c: [c.bids, c.regular_file / "out", "group"], 73,
                  lambda c: [c.regular_file.name], {}),
    "65-verbose": (lambda c: [c.bids, c.out, "group", "--covariates", "doesnotexist", "-v"], 65,
                   lambda c: ["doesnotexist"], {"verbose": True}),
    # numbers that are not finite; bad values that once were internal errors (exit 1)
    "64-alpha-nan": (lambda c: [c.bids, c.out, "group", "--alpha", "nan"], 64, lambda c: ["--alpha"], {"one_line": True}),
    "64-tfce-e-inf": (lambda c: [c.bids, c.out, "group", "--tfce", "--tfce-e", "inf"], 64,
                      lambda c: ["--tfce-e"], {"one_line": True}),
    "64-smoothing-nan": (lambda c: [c.bids, c.out, "group", "--smoothing-fwhm", "nan"], 64,
                         lambda c: ["--smoothing-fwhm"], {"one_line": True}),
    "64-nan-weight": (lambda c: [c.bids, c.out, "group", "--quiet", "--model", _model(c, "nan_weight")], 64,
                      lambda c: ["nanWeight"], {"one_line": True}),
    "64-duplicate-contrast": (lambda c: [c.bids, c.out, "group", "--quiet", "--model", _model(c, "duplicate_contrast")], 64,
                              lambda c: ["ageEffect"], {"one_line": True}),
    "64-transformer-type": (lambda c: [c.bids, c.out, "group", "--quiet", "--model", _model(c, "transformer_number")], 64,
                            lambda c: ["Transformer"], {"one_line": True}),
    "64-deep-json": (lambda c: [c.bids, c.out, "group", "--quiet", "--model", _model(c, "deep")], 64,
                     lambda c: ["deep.json"], {"one_line": True}),
    "65-participants-empty": (lambda c: [c.root / "empty_tsv", c.out, "group", "--quiet"], 65,
                              lambda c: ["participants.tsv"], {"one_line": True}),
    "65-participants-header-only": (lambda c: [c.root / "header_tsv", c.out, "group", "--quiet", "--covariates", "age"], 65,
                                    lambda c: ["participants.tsv"], {"one_line": True}),
    "65-covariate-inf": (lambda c: [c.root / "inf_age", c.out, "group", "--quiet", "--covariates", "age"], 65,
                         lambda c: ["age"], {"one_line": True}),
    "65-nan-affine": (lambda c: [c.root / "nan_affine", c.out, "group", "--quiet"], 65,
                      lambda c: [CORRUPT_NAME], {"one_line": True}),
    "65-zero-affine": (lambda c: [c.root / "zero_affine", c.out, "group", "--quiet"], 65,
                       lambda c: [CORRUPT_NAME], {"one_line": True}),
    "64-verbose": (lambda c: [c.bids, c.out, "group", "--alpha", "2", "-v"], 64,
                   lambda c: ["--alpha"], {"verbose": True, "python_m": True}),
    # issue 9: the level is checked before anything else, and before -w is created
    "17-level-reports-only": (lambda c: [c.bids, c.out, "session", "--reports-only"], 17,
                              lambda c: ["'session'"], {"one_line": True}),
    "17-level-work-dir": (lambda c: [c.bids, c.out, "session", "-w", c.sandbox / "work"], 17,
                          lambda c: ["'session'"], {"one_line": True}),
    # issue 9: --reports-only ignores the analysis options: giving one is a usage error
    "64-reports-only-alpha": (lambda c: [c.bids, c.out, "group", "--reports-only", "--alpha", "0.01"], 64,
                              lambda c: ["--reports-only", "--alpha"], {"one_line": True}),
    "64-reports-only-model": (lambda c: [c.bids, c.out, "group", "--reports-only", "--model", _model(c, "no_nodes")],
                              64, lambda c: ["--reports-only", "--model"], {"one_line": True}),
    # issue 9: nothing is written into the raw BIDS_DIR, only under BIDS_DIR/derivatives/
    "64-output-in-bids": (lambda c: [c.bids, c.bids / "grp", "group", "--quiet"], 64,
                          lambda c: ["OUTPUT_DIR", "grp", "derivatives"], {"one_line": True}),
    "64-output-in-subject": (lambda c: [c.bids, c.bids / "sub-01" / "grp", "group", "--quiet"], 64,
                             lambda c: ["OUTPUT_DIR", "sub-01", "derivatives"], {"one_line": True}),
    "64-output-dotdot": (lambda c: [c.bids, c.bids / "derivatives" / ".." / "grp", "group", "--quiet"], 64,
                         lambda c: ["OUTPUT_DIR", "grp", "derivatives"], {"one_line": True}),
    "64-work-dir-in-bids": (lambda c: [c.bids, c.out, "group", "--quiet", "-w", c.bids / "work"], 64,
                            lambda c: ["--work-dir", "work", "derivatives"], {"one_line": True}),
    "64-database-in-bids": (lambda c: [c.bids, c.out, "group", "--quiet", "--bids-database-dir", c.bids / "db"], 64,
                            lambda c: ["--bids-database-dir", "db", "derivatives"], {"one_line": True}),
    # maps that hold nothing, a folder named like a map
    "65-all-nan-map": (lambda c: [c.root / "all_nan", c.out, "group", "--quiet"], 65,
                       lambda c: [CORRUPT_NAME, "NaN"], {"one_line": True}),
    "65-all-zero-map": (lambda c: [c.root / "all_zero", c.out, "group", "--quiet"], 65,
                        lambda c: [CORRUPT_NAME, "zero"], {"one_line": True}),
    "65-folder-named-like-a-map": (lambda c: [c.root / "map_folder", c.out, "group", "--quiet"], 65,
                                   lambda c: [CORRUPT_NAME, "folder"], {"one_line": True}),
    # shufflings that cannot fit in memory on any machine (a regression over 10 subjects draws all 10^12)
    "64-n-perm-memory": (lambda c: [c.root / "ten", c.out, "group", "--quiet", "--filter", "contrast=motor",
                                    "--covariates", "age", "--n-perm", str(10**12)],
                         64, lambda c: ["--n-perm 1000000000000", "GiB", "or less"], {"one_line": True}),
    # the PyBIDS database cannot be written (file size limit: writes fail with EFBIG, as on a full disk)
    "73-database-write-fails": (lambda c: [c.bids, c.out, "group", "--quiet", "--bids-database-dir", c.sandbox / "db"], 73,
                                lambda c: [c.sandbox / "db"], {"one_line": True, "file_size_limit": 20_000,
                                                               "written": lambda c: [c.sandbox / "db"]}),
    # 300-character model, node and contrast names: a run that succeeds, with capped file names
    "0-long-names": (lambda c: [c.bids, c.out, "group", "--quiet", "--filter", "contrast=motor",
                                "--model", _model(c, "long_names")], 0, lambda c: [], {}),
}
# issue 10: spec keys this app does not run and keys not in the spec are refused by their path (64)
SUBPROCESS_CASES.update({
    "64-variance-components": (lambda c: [c.bids, c.out, "group", "--quiet", "--model", _model(c, "variance_components")],
                               64, lambda c: ["Nodes[0].Model.VarianceComponents"], {"one_line": True}),
    "64-fema-on-a-covariate": (lambda c: [c.bids, c.out, "group", "--quiet", "--model", _model(c, "fema_covariate")],
                               64, lambda c: ["FEMA contrast 'fixedAge' weighs age", "Test 't' for covariates"],
                               {"one_line": True}),
    "64-formula-typo": (lambda c: [c.bids, c.out, "group", "--quiet", "--model", _model(c, "formula_typo")], 64,
                        lambda c: ["Nodes[0].Model.Formulae", "not a BIDS Stats Models key"], {"one_line": True}),
})


def _file_size_limit(size):
    """A ``preexec_fn`` capping the size of files the process writes (writes beyond fail with EFBIG)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return limit


@pytest.fixture(scope="module")
def subprocess_results(inputs_root, tmp_path_factory):
    """Run every SUBPROCESS_CASES entry as a real process, all at once."""
    before_inputs = listing(inputs_root)
    running = {}
    for case_id, (make_argv, _, _, opts) in SUBPROCESS_CASES.items():
        c = _context(inputs_root, tmp_path_factory.mktemp(f"cli-errors-{case_id}") / "sandbox")
        argv = [str(a) for a in make_argv(c)]
        skip = [Path(argv[1]), *opts.get("written", lambda c: [])(c)]
        before_sandbox = listing(c.sandbox, skip=skip)
        cmd = ([sys.executable, "-m", "bids_group_app"] if opts.get("python_m") else _command()) + argv
        limit = opts.get("file_size_limit")
        proc = subprocess.Popen(cmd, cwd=c.sandbox, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_file_size_limit(limit) if limit else None)
        running[case_id] = (proc, c, argv, before_sandbox, skip)
    results = {}
    for case_id, (proc, c, argv, before_sandbox, skip) in running.items():
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[case_id] = SimpleNamespace(code=proc.returncode, stdout=out, stderr=err, ctx=c,
                                           output_dir=Path(argv[1]), before_sandbox=before_sandbox, skip=skip)
    return results, before_inputs


@pytest.mark.parametrize("case_id", list(SUBPROCESS_CASES))
def test_error_as_subprocess(case_id, subprocess_results, inputs_root):
    results, before_inputs = subprocess_results
    result = results[case_id]
    _, expected, make_names, opts = SUBPROCESS_CASES[case_id]
    names = make_names(result.ctx)
    if expected == 0:
        check_success(result, inputs_root, before_inputs)
        return
    assert result.code == expected, f"exit {result.code}, expected {expected}; stderr:\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(ERROR_PREFIX), result.stderr
    for name in names:
        assert str(name) in lines[-1]
    if opts.get("verbose"):
        assert "Traceback (most recent call last)" in result.stderr
    else:
        check_message(result.code, result.stderr, expected, names)
    if opts.get("one_line"):
        assert len(lines) == 1, f"stderr is not one line:\n{result.stderr}"
    assert result.stdout == ""
    check_clean(result.output_dir, result.ctx.sandbox, inputs_root, before_inputs, result.before_sandbox,
                skip=result.skip)


def check_success(result, inputs_root, before_inputs):
    """The long-names run: exit 0, maps written, every name component < 255 bytes, full names in sidecars."""
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr and ERROR_PREFIX not in result.stderr, result.stderr
    written = list(result.output_dir.rglob("*"))
    maps = [p for p in written if p.name.endswith("_statmap.nii.gz")]
    assert maps, "no map written"
    assert all(len(p.name.encode()) < 255 for p in written)
    model_label = "M" + "a" * 37  # cut to 38 characters + 8 hex digits of the full label's hash
    assert all(p.name.startswith(f"model-{model_label}") and len(p.name.split("_")[0]) == len("model-") + 46
               for p in maps)
    t_map = next(p for p in maps if "_stat-t_statmap" in p.name)
    about = json.loads(t_map.with_name(t_map.name.replace(".nii.gz", ".json")).read_text())
    assert "C" + LONG in json.dumps(about) and "N" + LONG in json.dumps(about)
    (saved,) = result.output_dir.glob("model-*_smdl.json")
    assert json.loads(saved.read_text())["Name"] == "M" + LONG
    assert listing(inputs_root) == before_inputs
    after = listing(result.ctx.sandbox, skip=[result.output_dir])
    after.pop(".", None)
    assert after == {k: v for k, v in result.before_sandbox.items() if k != "."}


def test_failure_while_fitting_removes_the_output_dir_it_created(ctx, capsys):
    fresh = ctx.sandbox / "new" / "nested" / "out"
    code, err = run_in_process(capsys, [ctx.corrupt, fresh, "group"])
    check_message(code, err, 65, [CORRUPT_NAME])
    assert not (ctx.sandbox / "new").exists()


def test_output_inside_derivatives_is_not_taken_as_input_on_a_rerun(inputs_root, tmp_path, capsys):
    bids = tmp_path / "ds"
    shutil.copytree(inputs_root / "bids", bids)
    out = bids / "derivatives" / "group"
    for _ in range(2):
        code, err = run_in_process(capsys, [bids, out, "group"])
        assert code == 0, err
    maps = sorted(p.name for p in out.rglob("*_stat-t_statmap.nii.gz"))
    assert maps == [
        "model-oneSample_task-localizer_input-language_contrast-intercept_stat-t_statmap.nii.gz",
        "model-oneSample_task-localizer_input-motor_contrast-intercept_stat-t_statmap.nii.gz",
    ]


def test_output_dir_through_a_symlink_into_bids_dir_is_refused(ctx, capsys):
    """Issue 9: a symlink to BIDS_DIR does not hide that OUTPUT_DIR is inside it."""
    link = ctx.sandbox / "link"
    link.symlink_to(ctx.bids, target_is_directory=True)
    before_inputs, before_sandbox = listing(ctx.root), listing(ctx.sandbox)
    code, err = run_in_process(capsys, [ctx.bids, link / "grp", "group"])
    check_message(code, err, 64, ["OUTPUT_DIR", "grp", "derivatives"])
    check_clean(link / "grp", ctx.sandbox, ctx.root, before_inputs, before_sandbox)


def test_outputs_under_bids_dir_derivatives_are_accepted(ctx):
    """Issue 9: OUTPUT_DIR, -w and --bids-database-dir under BIDS_DIR/derivatives/ pass the check."""
    from bids_group_app.cli.parser import parse_args

    deriv = ctx.bids / "derivatives"
    config = parse_args([str(ctx.bids), str(deriv / "group"), "group", "-w", str(deriv / "work"),
                         "--bids-database-dir", str(deriv / "db")])
    assert config.inputs.output_dir == deriv / "group"


def test_parse_error_does_not_create_the_work_dir(ctx, capsys):
    """Issue 9: -w is created only once the command line is valid."""
    work = ctx.sandbox / "work"
    for argv in ([ctx.bids, ctx.out, "participant", "-w", work],
                 [ctx.bids, ctx.out, "group", "--alpha", "2", "-w", work],
                 [ctx.bids, ctx.out, "group", "--reports-only", "--covariates", "age", "-w", work]):
        code, err = run_in_process(capsys, argv)
        assert code in (17, 64), err
        assert not work.exists(), argv


@pytest.mark.parametrize("options", [["--quiet"], ["-v"], ["--n-cpus", "2"], ["-w", "WORK"]])
def test_reports_only_accepts_the_options_it_uses(ctx, capsys, options):
    """Issue 9: only the analysis options are refused with --reports-only (here: no results yet, 66)."""
    options = [str(ctx.sandbox / "work") if o == "WORK" else o for o in options]
    capsys.readouterr()
    code = main([str(ctx.bids), str(ctx.out), "group", "--reports-only", *options])
    check_message(code, capsys.readouterr().err, 66, ["no results"])
