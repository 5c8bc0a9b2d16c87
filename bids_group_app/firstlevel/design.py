"""Run-level design matrices from a BIDS Stats Model (PyBIDS), with nilearn's HRFs and drifts.

The Run node of the model is run by PyBIDS' ``BIDSStatsModelsGraph``, as
FitLins runs it: the events and confounds PyBIDS loads for each run go
through the node's ``Transformations`` (``Factor``, ``Scale``, ``Demean``,
``Threshold``, ``Orthogonalize``, ``Product``, ``Replace``, ``Rename``, ...)
and ``Model.X`` (with wildcards such as ``trans_*``) selects the columns,
densified at the repetition time. Two things differ from plain PyBIDS, so
that a design equals nilearn's ``make_first_level_design_matrix``:

* ``Convolve`` is :class:`NilearnConvolve`: nilearn's ``compute_regressor``
  evaluated at the frame times ``arange(n_volumes) * TR`` with nilearn's
  defaults (``oversampling=50``, ``min_onset=-24``), instead of PyBIDS'
  copy of it on a 10 Hz grid with ``min_onset=0`` that is then resampled to
  the TR (which differs from nilearn by up to a few percent of a regressor's
  peak; see the tests);
* the drift and the intercept are nilearn's: cosine regressors below
  ``Model.Options.HighPassFilterCutoffHz`` (none without it) and one constant
  column, named ``intercept`` (PyBIDS' ``intercept`` from ``1`` in
  ``Model.X`` is replaced by it; every run design has one).

Missing values (fMRIPrep writes ``n/a`` in the first row of
``framewise_displacement`` and the derivative columns) are replaced by 0,
as FitLins does, and logged per run and column (never silently);
``missing="error"`` refuses them instead.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bids_group_app.errors import DataError, MissingInputError

LOGGER = logging.getLogger(__name__)

#: nilearn ``make_first_level_design_matrix`` defaults used for convolution.
OVERSAMPLING = 50
MIN_ONSET = -24.0
#: Entity -> file-name key, for run labels in messages.
SHORT = {"subject": "sub", "session": "ses", "task": "task", "acquisition": "acq", "run": "run"}


@dataclass
class RunDesign:
    """The design of one run.

    Attributes
    ----------
    entities : dict
        The run's entities (``subject``, ``task``, ``run``, ... as PyBIDS
        reports them: ``run`` is an int).
    matrix : pandas.DataFrame
        ``n_volumes`` rows; model columns, then drift columns, then ``intercept``.
    frame_times : numpy.ndarray
        Acquisition times (s) of the volumes: the onsets of the rows PyBIDS
        densified at the TR (``arange(n_volumes) * TR``).
    contrasts : list of dict
        ``name``, ``weights`` (list of dicts column -> weight, one per row),
        ``test`` (``"t"`` or ``"F"``) of the node's contrasts (and dummy contrasts).
    filled : dict
        Column -> number of missing values replaced by 0.
    """

    entities: dict
    matrix: pd.DataFrame
    frame_times: np.ndarray
    contrasts: list
    filled: dict

    def contrast_matrix(self, weights):
        """A contrast's weights as an array over the design columns ((q, p), or (p,) when q == 1).

        Raises
        ------
        DataError
            If a weight names a column the design lacks.
        """
        rows = []
        for row in weights:
            unknown = sorted(set(row) - set(self.matrix.columns))
            if unknown:
                raise DataError(f"contrast weights name {', '.join(unknown)}, not in the run design "
                                f"(columns: {', '.join(self.matrix.columns)})")
            rows.append([float(row.get(c, 0.0)) for c in self.matrix.columns])
        matrix = np.asarray(rows)
        return matrix[0] if matrix.shape[0] == 1 else matrix


def _nilearn_convolve_class():
    """A PyBIDS ``Convolve`` whose kernel is nilearn's at the frame times (built lazily)."""
    from bids.modeling.transformations import Convolve
    from bids.variables import DenseRunVariable, SparseRunVariable
    from nilearn.glm.first_level import compute_regressor

    class NilearnConvolve(Convolve):
        """PyBIDS ``Convolve`` evaluated as nilearn's ``make_first_level_design_matrix`` does."""

        def _transform(self, var, model="spm", derivative=False, dispersion=False, fir_delays=None):
            if not isinstance(var, SparseRunVariable) or len(var.run_info) != 1:
                return super()._transform(var, model=model, derivative=derivative,
                                          dispersion=dispersion, fir_delays=fir_delays)
            info = var.run_info[0]
            hrf = model.lower()
            if hrf in ("spm", "glover"):
                hrf += " + derivative" * bool(derivative) + " + dispersion" * bool(dispersion)
            frame_times = np.arange(info.n_vols) * info.tr
            df = var.to_df(entities=False)
            events = df[["onset", "duration", "amplitude"]].to_numpy(float).T
            values, names = compute_regressor(events, hrf, frame_times, con_id=var.name,
                                              oversampling=OVERSAMPLING, fir_delays=fir_delays,
                                              min_onset=MIN_ONSET)
            return [DenseRunVariable(name=name, values=values[:, [i]], run_info=var.run_info,
                                     source=var.source, sampling_rate=1.0 / info.tr)
                    for i, name in enumerate(names)]

    return NilearnConvolve


class _Transforms:
    """PyBIDS' transformations with ``Convolve`` replaced by :class:`NilearnConvolve`."""

    def __init__(self):
        from bids.modeling import transformations

        self._module = transformations
        self.Convolve = _nilearn_convolve_class()

    def __getattr__(self, name):
        return getattr(self._module, name)


#: ``Model.HRF.Model`` values (nilearn's HRF models), lower case.
HRF_MODELS = ("spm", "spm + derivative", "spm + derivative + dispersion", "glover", "glover + derivative",
              "glover + derivative + dispersion", "fir")


def hrf_columns(variable, model, fir_delays=()):
    """The design columns nilearn's ``compute_regressor`` makes of ``variable`` under an HRF ``model``.

    ``spm``/``glover``: the variable itself, then ``<variable>_derivative``
    and ``<variable>_dispersion`` when asked; ``fir``: one
    ``<variable>_delay_<d>`` per delay (the variable itself is not a column).
    """
    if model == "fir":
        return [f"{variable}_delay_{int(d)}" for d in fir_delays]
    return [variable] + [f"{variable}_{part}" for part in ("derivative", "dispersion") if f"+ {part}" in model]


def _hrf_spec(hrf, where):
    """(model, fir_delays) of a ``Model.HRF`` object, refusing what it cannot mean (UsageError)."""
    from bids_group_app.errors import UsageError

    if not isinstance(hrf, dict) or not isinstance(hrf.get("Variables"), list) or not hrf["Variables"] \
            or not isinstance(hrf.get("Model"), str):
        raise UsageError(f"{where}.HRF must be an object with Variables (a non-empty list of X columns) and "
                         "Model (e.g. {\"Variables\": [\"trial_type.faces\"], \"Model\": \"spm\"})")
    unknown = sorted(set(hrf) - {"Variables", "Model", "Parameters", "Description"})
    if unknown:
        raise UsageError(f"{where}.HRF.{unknown[0]} is not a Model.HRF key (Variables, Model, Parameters, "
                         "Description)")
    model = " + ".join(part.strip() for part in hrf["Model"].lower().split("+"))
    if model not in HRF_MODELS:
        raise UsageError(f"{where}.HRF.Model {hrf['Model']!r} is not supported; valid: {', '.join(HRF_MODELS)} "
                         "(nilearn's HRF models)")
    parameters = dict(hrf.get("Parameters") or {})
    delays = parameters.pop("fir_delays", parameters.pop("FIRDelays", None))
    if parameters:
        raise UsageError(f"{where}.HRF.Parameters.{sorted(parameters)[0]} is not supported (nilearn's named HRF "
                         "models take no parameters; 'fir' takes fir_delays)")
    if model == "fir":
        if not isinstance(delays, list) or not delays or not all(isinstance(d, int) and d >= 0 for d in delays):
            raise UsageError(f"{where}.HRF.Model 'fir' needs Parameters.fir_delays: a list of delays in scans "
                             "(integers >= 0), e.g. [0, 1, 2, 3]")
    elif delays is not None:
        raise UsageError(f"{where}.HRF.Parameters.fir_delays is for the 'fir' model, not {model!r}; remove it")
    return model, delays or []


def with_model_hrf(document, node_name):
    """The model with the Run node's ``Model.HRF`` turned into a ``Convolve`` transformation.

    The BIDS Stats Models ``Model.HRF`` (``Variables``, ``Model``,
    ``Parameters``) convolves the named ``Model.X`` variables with an HRF.
    It is run as the last transformation of the node, by
    :class:`NilearnConvolve` (nilearn's ``compute_regressor`` at the frame
    times), and every variable in ``Model.X`` is replaced by the columns the
    HRF makes of it (:func:`hrf_columns`: derivatives and dispersions follow
    it; FIR delays replace it).

    Parameters
    ----------
    document : dict
        The BIDS Stats Model (not modified).
    node_name : str
        The Run node's name.

    Returns
    -------
    dict
        A copy without ``Model.HRF`` in that node (the document itself when it has none).

    Raises
    ------
    UsageError
        A malformed HRF, an unknown model, a variable that is not in
        ``Model.X`` or that a ``Convolve`` transformation already convolves,
        or a contrast naming a variable that ``fir`` replaces.
    """
    import copy

    from bids_group_app.errors import UsageError

    index = next(i for i, n in enumerate(document["Nodes"]) if str(n.get("Name", f"node{i}")) == node_name)
    if "HRF" not in (document["Nodes"][index].get("Model") or {}):
        return document
    document = copy.deepcopy(document)
    node = document["Nodes"][index]
    where = f"node '{node_name}' Model"
    hrf = node["Model"].pop("HRF")
    model, delays = _hrf_spec(hrf, where)
    variables = [str(v) for v in hrf["Variables"]]
    x = node["Model"].get("X") or []
    absent = [v for v in variables if v not in x]
    if absent:
        raise UsageError(f"{where}.HRF.Variables names {', '.join(absent)}, not in Model.X; the variables to "
                         "convolve must be columns of X")
    instructions = (node.get("Transformations") or {}).get("Instructions") or []
    twice = sorted({v for step in instructions if str(step.get("Name", "")).lower() == "convolve"
                    for v in (step.get("Input") or []) if v in variables})
    if twice:
        raise UsageError(f"{where}.HRF convolves {', '.join(twice)}, which a Convolve transformation already "
                         "convolves; keep one of the two")
    if model == "fir":
        named = sorted({c for con in node.get("Contrasts") or [] for c in con.get("ConditionList") or []
                        if c in variables})
        if named:
            raise UsageError(f"a contrast names {', '.join(named)}, which Model.HRF 'fir' replaces by its delay "
                             f"columns ({', '.join(hrf_columns(named[0], model, delays))}); name those instead")
    node["Model"]["X"] = [c for v in x for c in (hrf_columns(v, model, delays) if v in variables else [v])]
    step = {"Name": "Convolve", "Input": variables, "Model": model.split(" + ")[0],
            "Derivative": "+ derivative" in model, "Dispersion": "+ dispersion" in model}
    if model == "fir":
        step["FIRDelays"] = delays
    transformations = node.setdefault("Transformations", {"Transformer": "pybids-transforms-v1"})
    transformations["Instructions"] = [*instructions, step]
    return document


def run_node(graph, name=None):
    """The Run node of a graph (the one named ``name``, else the root), with nilearn's Convolve.

    Raises
    ------
    DataError
        If the node is not at the run level.
    """
    node = graph.nodes[name] if name else graph.root_node
    if node.level != "run":
        raise DataError(f"node {node.name!r} is at the {node.level} level, not the run level")
    if node.transformations:
        transformer = node.transformations.get("transformer", "pybids-transforms-v1")
        if transformer not in (None, "pybids-transforms-v1") and not isinstance(transformer, _Transforms):
            raise DataError(f"node {node.name!r}: transformer {transformer!r} is not supported "
                            "(pybids-transforms-v1 is)")
        node.transformations["transformer"] = _Transforms()
    return node


def build_graph(layout, model, subject, **filters):
    """A ``BIDSStatsModelsGraph`` with the run variables of one or more subjects loaded.

    Loading every subject of a process at once (as FitLins does) costs less
    than one graph per subject; :func:`run_designs` then takes one subject's
    runs from it, with the same designs (PyBIDS transforms each run's
    collection on its own).

    Parameters
    ----------
    layout : bids.BIDSLayout
    model : dict or str
        BIDS Stats Model (dict or path).
    subject : str or list of str
        Label(s) without ``sub-``.
    **filters
        Entity filters on the BOLD runs (``space``, ``task``, ...).
    """
    from bids.modeling import BIDSStatsModelsGraph

    from bids_group_app.firstlevel.inputs import memoized_entities

    graph = BIDSStatsModelsGraph(layout, model)
    with memoized_entities(layout):
        graph.load_collections(subject=[subject] if isinstance(subject, str) else list(subject), **filters)
    return graph


def fill_missing(matrix, label, missing="fill"):
    """Replace NaNs by 0 (logged), or refuse them.

    Parameters
    ----------
    matrix : pandas.DataFrame
    label : str
        The run, for messages.
    missing : {"fill", "error"}

    Returns
    -------
    (pandas.DataFrame, dict)
        The filled matrix and ``{column: number of values filled}``.
    """
    counts = {c: int(n) for c, n in matrix.isna().sum().items() if n}
    if not counts:
        return matrix, counts
    listed = ", ".join(f"{c} ({n} row{'s' * (n > 1)})" for c, n in counts.items())
    if missing == "error":
        raise DataError(f"{label}: missing values (n/a) in design columns {listed}")
    LOGGER.warning("%s: missing values (n/a) replaced by 0 in %s", label, listed)
    return matrix.fillna(0.0), counts


def _check_columns(node, columns, label):
    """Every named (non-wildcard) Model.X column must be in the design."""
    wanted = [x for x in node.model["x"] if x != 1 and not any(ch in str(x) for ch in "*?[")]
    absent = [x for x in wanted if x not in columns]
    if absent:
        raise MissingInputError(f"{label}: Model.X names {', '.join(absent)}, which the events, "
                                f"confounds and transformations do not give; available: "
                                f"{', '.join(columns)}")


def _with_drift(node, matrix, frame_times):
    """Append nilearn's cosine drift (from HighPassFilterCutoffHz) and constant, named intercept."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    options = node.model.get("options", {}) or {}
    high_pass = options.get("high_pass_filter_cutoff_hz")
    regs = matrix.drop(columns=[c for c in ("intercept",) if c in matrix.columns])
    full = make_first_level_design_matrix(
        frame_times, events=None, drift_model="cosine" if high_pass else None,
        high_pass=float(high_pass) if high_pass else 0.01,
        add_regs=regs.to_numpy(float), add_reg_names=list(regs.columns))
    return full.rename(columns={"constant": "intercept"}).reset_index(drop=True)


def _contrasts(output):
    """The node output's contrasts as plain dicts (weights as one dict per row)."""
    out = []
    for info in output.contrasts:
        rows = np.atleast_2d(np.asarray(info.weights, dtype=float))
        out.append({"name": info.name, "test": info.test or "t",
                    "weights": [dict(zip(info.conditions, map(float, row))) for row in rows]})
    return out


def run_designs(graph, subject, *, node=None, missing="fill"):
    """The design of each of a subject's runs, from the Run node of ``graph``.

    Parameters
    ----------
    graph : bids.modeling.BIDSStatsModelsGraph
        From :func:`build_graph` (its run collections loaded).
    subject : str
    node : str, optional
        Name of the Run node (default: the graph's root).
    missing : {"fill", "error"}
        What to do with ``n/a`` in the selected columns (see module docstring).

    Returns
    -------
    list of RunDesign
        One per run, in PyBIDS' order.
    """
    run = run_node(graph, node)
    # Absent Model.X columns are dropped by PyBIDS and then reported by _check_columns.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X specification includes")
        outputs = run.run(subject=subject, missing_values="ignore", invalid_inputs="drop",
                          invalid_contrasts="drop")
    designs = []
    for output in outputs:
        meta = output.metadata
        ents = {**{k: meta[k].iloc[0] for k in SHORT if k in meta and meta[k].nunique() == 1},
                **output.entities}
        label = "_".join(f"{SHORT[k]}-{ents[k]}" for k in SHORT if k in ents)
        matrix, filled = fill_missing(output.X.reset_index(drop=True), label, missing)
        _check_columns(run, list(matrix.columns), label)
        frame_times = output.metadata["onset"].to_numpy(float)
        designs.append(RunDesign(ents, _with_drift(run, matrix, frame_times), frame_times,
                                 _contrasts(output), filled))
    return designs
