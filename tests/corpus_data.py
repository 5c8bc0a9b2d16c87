"""FitLins-layout derivatives written *for* a given BIDS Stats Models document.

:func:`make_corpus_dataset` reads a model document (as published, see
``tests/data/bsm_corpus/SOURCES.md``) and writes a small BIDS dataset it can
run on:

* ``participants.tsv`` with the columns the model's non-Run nodes use
  (categorical where the document uses ``var.LEVEL``, ``C(var)[T.LEVEL]``,
  a ``Factor`` transformation or a ``GroupBy`` on the variable; numeric
  otherwise);
* ``derivatives/fitlins/node-<runNode>/sub-XX/sub-XX_task-T[_ses-S][_run-R]_contrast-C_stat-{effect,variance}_statmap.nii.gz``
  for the Run node's contrasts and DummyContrasts conditions;
* ``derivatives/fitlins/node-<node>/sub-XX/...`` for each Subject/Session
  node, combining the run maps by fixed effects (inverse-variance weights)
  with numpy.

Labels are made the way FitLins makes them: node and contrast names go
through :func:`to_alphanum`, a copy of ``fitlins.utils.strings.to_alphanum``
(poldracklab/fitlins, commit 35f9a0d4, ``fitlins/utils/strings.py``; used by
``BIDSDataSink`` in ``fitlins/interfaces/bids.py`` for the ``node``,
``name``, ``contrast`` and ``stat`` entities).

The returned *truth* dict says what was written (subjects, participants
rows, per-node contrast labels, runs, sessions), so tests can select the maps
a node's edges select without asking the app.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (10, 12, 10)
VOXEL_MM = 8.0
N_SUBJECTS = 10
ENTITIES = {"subject", "session", "run", "task", "contrast", "acquisition", "space", "desc"}
CATEGORY_DEFAULTS = {"sex": ["M", "F"], "group": ["A", "B"]}


def to_alphanum(string):
    """FitLins's label for a name (quoted from ``fitlins.utils.strings``).

    ``re.sub("[^a-zA-Z0-9]", "_", s)`` then snake_case to camelCase:
    ``'trial_type.word'`` -> ``'trialTypeWord'``, ``'a four word phrase'``
    -> ``'aFourWordPhrase'``.
    """
    words = re.sub("[^a-zA-Z0-9]", "_", str(string)).split("_")
    return words[0] + "".join(word.title() for word in words[1:])


def model_nodes(document):
    """The nodes of a document (``Nodes``, or ``Steps`` of the pre-1.0 drafts), names filled in."""
    nodes = document.get("Nodes") or document.get("Steps") or []
    return [dict(n, Name=n.get("Name") or n.get("Level")) for n in nodes]


def level(node):
    """The node's level, lower case."""
    return str(node.get("Level", "")).lower()


def node_sources(document):
    """``{destination name: (source name, edge filter)}`` from Edges, else the previous node."""
    nodes = model_nodes(document)
    edges = document.get("Edges")
    if edges:
        return {e["Destination"]: (e["Source"], e.get("Filter") or {}) for e in edges}
    return {nodes[i]["Name"]: (nodes[i - 1]["Name"], {}) for i in range(1, len(nodes))}


def _instructions(node):
    transforms = node.get("Transformations")
    if isinstance(transforms, dict):
        return transforms.get("Instructions") or []
    return transforms if isinstance(transforms, list) else []


def _as_list(value):
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run_contrasts(node):
    """Names of the contrasts a Run (or Subject) node outputs: explicit Contrasts, then DummyContrasts."""
    names = [str(c["Name"]) for c in node.get("Contrasts") or []]
    dummy = node.get("DummyContrasts")
    if dummy:
        dummy = dummy if isinstance(dummy, dict) else {}
        listed = dummy.get("Contrasts", dummy.get("Conditions"))
        x = (node.get("Model") or {}).get("X") or []
        for name in _as_list(listed) if listed is not None else x:
            name = "intercept" if name in (1, "1") else str(name)
            if "*" not in name and "?" not in name and name not in names:
                names.append(name)
    return names


def _used_names(node):
    """Every variable name a non-Run node refers to (X, GroupBy, Filter, contrasts, transformations, formula)."""
    model = node.get("Model") or {}
    names = [str(v) for v in _as_list(model.get("X"))]
    names += [str(v) for v in _as_list(node.get("GroupBy"))]
    names += [str(k) for k in (node.get("Filter") or {})]
    for contrast in node.get("Contrasts") or []:
        names += [str(v) for v in _as_list(contrast.get("ConditionList"))]
    for instruction in _instructions(node):
        names += [str(v) for v in _as_list(instruction.get("Input"))]
    names += re.findall(r"[A-Za-z_][\w.]*", str(model.get("Formula") or ""))
    return names


def participant_columns(document, contrast_names):
    """``{column: list of levels, or None for numeric}`` that participants.tsv needs.

    Only Dataset nodes are read: variables of Run/Subject/Session nodes
    (``runnum``, a ``split`` by session) are first-level variables.
    """
    text = json.dumps(document)
    outputs, factors, columns = set(), set(), {}
    for node in model_nodes(document):
        if level(node) != "dataset":
            continue
        for instruction in _instructions(node):
            outputs.update(str(v) for v in _as_list(instruction.get("Output")))
            if str(instruction.get("Name")).lower() == "factor":
                factors.update(str(v) for v in _as_list(instruction.get("Input")))
        grouped = {str(g) for g in _as_list(node.get("GroupBy"))} - ENTITIES
        for name in _used_names(node) + sorted(grouped):
            base = name.split(".")[0]
            if (name in ("1", "intercept", "C") or name in outputs or name in contrast_names
                    or base in ENTITIES or "*" in name or not re.match(r"^[A-Za-z_]\w*$", base)):
                continue
            if "." in name or name in grouped or name in factors:
                factors.add(base)
            columns.setdefault(base, None)
    for base in columns:
        if base in factors or base in CATEGORY_DEFAULTS:
            levels = re.findall(rf"\b{re.escape(base)}\.([A-Za-z0-9]+)", text)
            levels += re.findall(rf"C\({re.escape(base)}\)\[T\.([A-Za-z0-9]+)\]", text)
            levels = list(dict.fromkeys(levels)) or CATEGORY_DEFAULTS.get(base, ["A", "B"])
            columns[base] = levels
    return columns


def participants_rows(columns, n_subjects, rng):
    """One row per subject: categorical columns cycle through their levels, crossed, numeric ones are random."""
    rows = []
    for i in range(n_subjects):
        row = {"participant_id": f"sub-{i + 1:02d}"}
        stride = 1  # categorical columns are crossed: every combination of levels appears before any repeats
        for column, levels in columns.items():
            if levels:
                row[column] = levels[(i // stride) % len(levels)]
                stride *= len(levels)
            else:
                row[column] = round(float(rng.uniform(20, 60)), 1)
        rows.append(row)
    return rows


def _write_participants(root, rows):
    header = list(rows[0])
    lines = ["\t".join(header)] + ["\t".join(str(r[h]) for h in header) for r in rows]
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")


def _save(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))


def _first_task(document):
    tasks = _as_list((document.get("Input") or {}).get("task"))
    return str(tasks[0]) if tasks else "mixedgamblestask"


def _sessions(document):
    """``['test', 'retest']`` when a transformation splits by session, two sessions when a GroupBy has it, else ``[None]``."""
    nodes = model_nodes(document)
    grouped = any("session" in [str(g) for g in _as_list(n.get("GroupBy"))] for n in nodes)
    split = any(str(i.get("By")) == "session" for n in nodes for i in _instructions(n))
    if split:
        return ["test", "retest"]
    return ["1", "2"] if grouped else [None]


def _runs(document, run_node):
    """Run labels: one per run when the Run node groups by run (3 for mixed gambles, as ds005), else none."""
    group_by = run_node.get("GroupBy")
    if group_by is not None and "run" not in [str(g) for g in group_by]:
        return [None]
    return ["1", "2", "3"] if "mixedgambles" in _first_task(document) else ["1", "2"]


def _stem(sub, task, ses, run, contrast):
    parts = [sub] + ([f"ses-{ses}"] if ses else []) + [f"task-{task}"] + ([f"run-{run}"] if run else [])
    return "_".join(parts + [f"contrast-{to_alphanum(contrast)}"])


def fixed_effects(effects, variances):
    """Inverse-variance (fixed-effects) combination of maps: (effect, variance)."""
    precision = sum(1.0 / v for v in variances)
    return sum(e / v for e, v in zip(effects, variances)) / precision, 1.0 / precision


def _condition_maps(condition, maps):
    """The run maps a Subject/Session-level condition stands for.

    ``<contrast>.<session>`` (a ``split`` by session) selects that session;
    ``runs1_2``/``run3`` (the model-zoo Threshold-on-run columns) select
    those runs; anything else selects all runs.
    """
    name = str(condition)
    if "." in name:
        base, ses = name.rsplit(".", 1)
        return [m for m in maps if m["contrast"] == base and m["ses"] == ses]
    match = re.fullmatch(r"runs?(\d+(?:_\d+)*)", name)
    if match:
        wanted = set(match.group(1).split("_"))
        return [m for m in maps if m["run"] in wanted]
    return maps


def _planted(rng, mask, contrast_index, amplitude, blob):
    noise = rng.normal(0.0, 1.0, SHAPE)
    return np.where(mask, noise + amplitude * (1 + 0.3 * contrast_index) * blob, 0.0)


def make_corpus_dataset(root, document, *, n_subjects=N_SUBJECTS, seed=0):
    """Write a BIDS dataset with FitLins derivatives for ``document``; return the truth.

    Parameters
    ----------
    root : path-like
        An empty folder: the BIDS_DIR.
    document : dict
        A BIDS Stats Models document.
    n_subjects : int
        Subjects ``sub-01`` ... (``Input.subject`` of the model may select fewer).
    seed : int

    Returns
    -------
    dict
        ``root``, ``task``, ``subjects``, ``rows`` (participants.tsv),
        ``columns`` (``{column: levels or None}``), ``node_contrasts``
        (``{node name: [contrast names written]}``), ``node_labels``
        (``{node name: FitLins label}``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    nodes = model_nodes(document)
    run_node = next((n for n in nodes if level(n) == "run"), None)
    if run_node is None:
        raise ValueError("the model has no Run node")
    task = _first_task(document)
    sessions, runs = _sessions(document), _runs(document, run_node)
    subjects = [f"sub-{i + 1:02d}" for i in range(n_subjects)]
    written = {run_node["Name"]: run_contrasts(run_node)}
    sources = node_sources(document)
    for node in nodes:
        if level(node) in ("subject", "session") and node.get("Model"):
            source = sources.get(node["Name"], (run_node["Name"], {}))[0]
            incoming = written.get(source, [])
            names = [str(c["Name"]) for c in node.get("Contrasts") or []
                     if [str(v) for v in _as_list(c.get("ConditionList"))] not in (["1"], ["intercept"])]
            written[node["Name"]] = names + (incoming if node.get("DummyContrasts") else [])
    all_contrasts = {c for names in written.values() for c in names}
    columns = participant_columns(document, all_contrasts)
    rows = participants_rows(columns, n_subjects, rng)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "corpus", "BIDSVersion": "1.8.0"}))
    _write_participants(root, rows)
    deriv = root / "derivatives" / "fitlins"
    deriv.mkdir(parents=True)
    (deriv / "dataset_description.json").write_text(json.dumps({
        "Name": "FitLins-layout maps for a corpus model", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "FitLins"}]}))
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -VOXEL_MM * (np.array(SHAPE) - 1) / 2
    grid = np.indices(SHAPE).transpose(1, 2, 3, 0) - (np.array(SHAPE) - 1) / 2
    mask = (grid ** 2 / (np.array(SHAPE) / 2.2) ** 2).sum(-1) <= 1
    blob = np.exp(-((grid - [2, 2, 1]) ** 2).sum(-1) / (2 * 1.5 ** 2))
    run_maps = {}
    for s, sub in enumerate(subjects):
        maps = []
        for c_index, contrast in enumerate(written[run_node["Name"]]):
            for ses in sessions:
                for run in runs:
                    effect = _planted(rng, mask, c_index, 2.0 + 0.5 * (s % 3), blob)
                    variance = np.where(mask, rng.uniform(0.5, 1.5, SHAPE), 1.0)
                    maps.append({"contrast": contrast, "ses": ses, "run": run, "effect": effect, "variance": variance})
                    stem = _stem(sub, task, ses, run, contrast)
                    for stat in ("effect", "variance"):
                        path = deriv / f"node-{to_alphanum(run_node['Name'])}" / sub / f"{stem}_stat-{stat}_statmap.nii.gz"
                        _save(path, maps[-1][stat], affine)
        run_maps[sub] = maps
    for node in nodes:
        if node["Name"] in written and node is not run_node:
            _write_subject_node(deriv, node, written, run_maps, task, affine)
    return {"root": str(root), "task": task, "subjects": subjects, "rows": rows, "columns": columns,
            "node_contrasts": written, "node_labels": {n["Name"]: to_alphanum(n["Name"]) for n in nodes},
            "sessions": sessions, "runs": runs}


def _write_subject_node(deriv, node, written, run_maps, task, affine):
    """Fixed-effects maps of one Subject/Session node for every subject.

    A DummyContrast passes an incoming contrast through (fixed effects over
    its run maps); an explicit contrast combines the fixed-effects maps of
    its conditions (see :func:`_condition_maps`) with its weights.
    """
    explicit = {str(c["Name"]): c for c in node.get("Contrasts") or []}
    label = to_alphanum(node["Name"])
    for sub, maps in run_maps.items():
        for contrast in written[node["Name"]]:
            if contrast in explicit:
                spec = explicit[contrast]
                weights = np.asarray(spec.get("Weights"), float).ravel()
                effect, variance = 0.0, 0.0
                for condition, weight in zip(_as_list(spec.get("ConditionList")), weights):
                    chosen = _condition_maps(condition, maps)
                    e, v = fixed_effects([m["effect"] for m in chosen], [m["variance"] for m in chosen])
                    effect, variance = effect + weight * e, variance + weight ** 2 * v
            else:
                chosen = [m for m in maps if m["contrast"] == contrast]
                effect, variance = fixed_effects([m["effect"] for m in chosen], [m["variance"] for m in chosen])
            stem = f"{sub}_task-{task}_contrast-{to_alphanum(contrast)}"
            _save(deriv / f"node-{label}" / sub / f"{stem}_stat-effect_statmap.nii.gz", effect, affine)
            _save(deriv / f"node-{label}" / sub / f"{stem}_stat-variance_statmap.nii.gz", variance, affine)


# --------------------------------------------------------------------------
# Running one corpus model (shared by tests/model/test_corpus.py and
# scripts/corpus_status.py)
# --------------------------------------------------------------------------
CORPUS_DIR = Path(__file__).parent / "data" / "bsm_corpus"


def corpus_models():
    """Corpus model files as ``<source>/<name>.json`` paths relative to :data:`CORPUS_DIR`, sorted."""
    return sorted(str(p.relative_to(CORPUS_DIR)) for p in CORPUS_DIR.glob("*/*.json"))


def error_line(stderr, replacements):
    """The app's ``bids_group_app: error: ...`` line (or the last stderr line), paths made generic.

    ``replacements`` maps a temporary path to a placeholder (``BIDS_DIR``,
    ``OUTPUT_DIR``, ``MODEL``) so that the line is the same in every run.
    """
    lines = [line for line in stderr.splitlines() if line.strip()]
    chosen = next((line for line in lines if line.startswith("bids_group_app: ")
                   and ("error" in line or "interrupted" in line)), lines[-1] if lines else "")
    for path, placeholder in replacements.items():
        chosen = chosen.replace(str(path), placeholder)
    return chosen.strip()


def run_corpus_model(relpath, workdir, main):
    """Generate a dataset for one corpus model and run ``group --model`` on it.

    Parameters
    ----------
    relpath : str
        ``<source>/<name>.json`` under :data:`CORPUS_DIR`.
    workdir : path-like
        An empty folder; the dataset goes to ``workdir/bids``, the results
        to ``workdir/out``.
    main : callable
        ``main(argv) -> exit code`` (``bids_group_app.cli.run.main``, or the
        conftest ``run_cli`` fixture, which adds ``--no-reports``).

    Returns
    -------
    dict
        ``code`` (exit code), ``error`` (:func:`error_line`, empty when the
        code is 0), ``truth`` (from :func:`make_corpus_dataset`),
        ``document``, ``bids``, ``out``, ``model``.
    """
    import contextlib
    import io

    workdir = Path(workdir)
    model = CORPUS_DIR / relpath
    document = json.loads(model.read_text())
    truth = make_corpus_dataset(workdir / "bids", document)
    out = workdir / "out"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = main([str(a) for a in (workdir / "bids", out, "group", "--model", model, "--no-reports")])
        except SystemExit as stop:
            code = stop.code
    text = stderr.getvalue()
    error = "" if code == 0 else error_line(text, {out: "OUTPUT_DIR", workdir / "bids": "BIDS_DIR", model: "MODEL"})
    return {"code": code, "error": error, "stderr": text, "truth": truth, "document": document,
            "bids": workdir / "bids", "out": out, "model": model}
