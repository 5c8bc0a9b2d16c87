"""Planning: every check that needs no image data.

Paths, derivative datasets, filters, the model (a BIDS Stats Models file or
the short options), the GroupBy cells and their designs and contrasts, so
that most bad input fails before anything is computed.

Which maps enter a Dataset node (FitLins layouts)
-------------------------------------------------
When the indexed maps carry FitLins's ``node`` entity (``node-<label>/``
folders) and a model file is given, the edge into each Dataset node decides
(:func:`_route`): its Source node's folder ``node-<label>/`` (label as
FitLins writes it, :func:`bids_group_app.model.graph.fitlins_label`)
provides the maps. A Subject/Session source with no folder of its own but
whose source Run node has maps is computed from those runs
(:class:`ComputedMap`, written under ``node-<Subject>/`` and fed to the
Dataset node; see :mod:`bids_group_app.stats.fixed_effects`). ``Input`` and
CLI filters apply to the maps whose entities they name: a ``run`` filter
selects run-level maps and is reported (a warning) as not applying to
subject-level maps, which have no run; a filter that applies nowhere is an
error. Without a ``node`` entity (nilearn, SPM exports) the edges only carry
their ``Filter`` and every selected map is an input, as before.

A Dataset node fed by another Dataset node (a Dataset→Dataset edge, in any
layout) is fit on that node's outputs, as PyBIDS passes them on
(:func:`_chain_rows`): one row per cell and contrast of the source node
(its ``stat-effect`` map, with its ``stat-variance`` for FEMA), whose
columns are the source cell's GroupBy values and ``contrast`` (named as
PyBIDS names outputs, :func:`computed_contrast_name`); the rows have no
subject. Nodes are planned sources first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bids_group_app.config import (
    DEFAULTS,
    SOFTWARE_KEY,
    SURFACE_DEFAULTS,
    AnalysisSettings,
    check_settings,
    node_settings,
    software_options,
)
from bids_group_app.errors import (
    DataError,
    MissingInputError,
    NoFilesSelectedError,
    OutputError,
    UsageError,
)
from bids_group_app.inputs import index as inputs_stage
from bids_group_app.inputs.participants import (
    MATCHED,
    is_numeric,
    join_participants,
    level_labels,
    levels,
    read_participants,
    strip_sub,
)
from bids_group_app.model.design import build_design
from bids_group_app.model.graph import fitlins_label
from bids_group_app.model.spec import auto_group_by, load_model, model_from_options, parse_model
from bids_group_app.outputs.commit import model_label
from bids_group_app.outputs.naming import (
    ENTITY_KEYS,
    CellNames,
    cell_entities,
    computed_map,
    model_file,
    sanitize_label,
)

LOGGER = logging.getLogger(__name__)


@dataclass
class Cell:
    """One model fit: a node and the GroupBy values it was fit for."""

    node: object
    group_values: dict
    design: object
    names: CellNames  # its output file names
    settings: AnalysisSettings


@dataclass
class ComputedMap:
    """A subject-level map (per subject, GroupBy cell and contrast) computed from run-level maps.

    Attributes
    ----------
    node : bids_group_app.model.graph.LowerNode
        The Subject/Session node it stands for.
    subject : str
    entities : dict
        Entities shared by its runs that name it (task, session, ...).
    contrast : str
        Its contrast name.
    weight : float
        The weight of the node's contrast on the intercept.
    effects, variances : list of str
        The run-level maps (variances: empty for an OLS over runs).
    relpaths : dict
        ``{stat: path relative to OUTPUT_DIR}``, set once the model label is known.
    """

    node: object
    subject: str
    entities: dict
    contrast: str
    weight: float
    effects: list
    variances: list
    relpaths: dict = field(default_factory=dict)

    @property
    def method(self):
        """``fixed effects`` or ``OLS over runs``."""
        return "fixed effects" if self.node.fixed_effects else "OLS over runs"


@dataclass
class Route:
    """Where a Dataset node's maps come from: ``rows`` (index rows) of one source.

    ``subject_node`` is set when the rows are run-level maps to combine first.
    """

    edge: object
    rows: object
    subject_node: object = None


@dataclass
class Plan:
    """Everything decided before any image is loaded."""

    bids_dir: Path
    output_dir: Path
    derivatives: list
    document: dict
    filters: dict
    cells: list = field(default_factory=list)
    participants_report: dict = field(default_factory=dict)
    model_label: str = "model"
    computed: list = field(default_factory=list)  # ComputedMap, computed before the cells are fit
    chained: list = field(default_factory=list)  # relpaths of cell outputs that later cells read


def check_paths(inputs):
    """BIDS_DIR and OUTPUT_DIR, resolved and checked (exits 66, 64, 73, 65 with one-line messages)."""
    bids_dir = inputs.bids_dir.expanduser().resolve()
    if not bids_dir.is_dir():
        raise MissingInputError(f"BIDS_DIR {inputs.bids_dir} does not exist or is not a directory")
    output_dir = inputs.output_dir.expanduser().resolve()
    if output_dir == bids_dir or bids_dir.is_relative_to(output_dir):
        raise UsageError(f"OUTPUT_DIR {output_dir} would overwrite BIDS_DIR {bids_dir}; choose another folder (e.g. BIDS_DIR/derivatives/group)")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"OUTPUT_DIR {output_dir} exists and is not a directory; give a folder path")
    if not inputs.skip_bids_validation:
        description = bids_dir / "dataset_description.json"
        if not description.is_file():
            raise MissingInputError(f"{bids_dir} is not a BIDS dataset: dataset_description.json is missing (or pass --skip-bids-validation)")
        try:
            json.loads(description.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{description} is not valid JSON: {err}") from None
    return bids_dir, output_dir


def participant_outputs(output_dir):
    """Whether OUTPUT_DIR holds maps of the participant level (``node-<n>/sub-<s>/sub-<s>_..._statmap``)."""
    return any(Path(output_dir).glob("node-*/sub-*/sub-*_statmap.nii*"))


def _derivatives(inputs, bids_dir, output_dir):
    """The derivative datasets whose maps the group level reads.

    Without ``--derivatives``, an OUTPUT_DIR that holds the participant
    level's maps is the input (its own group-level files, named ``model-``,
    are not: :func:`_own_outputs`); else the datasets of
    :func:`~bids_group_app.inputs.index.resolve_derivatives`, which must not
    overlap OUTPUT_DIR (but OUTPUT_DIR itself when it holds participant maps).
    """
    own = participant_outputs(output_dir)
    if own and not inputs.derivatives:
        return [output_dir]
    derivatives = [Path(d).resolve() for d in inputs_stage.resolve_derivatives(bids_dir, list(inputs.derivatives) or None)]
    for deriv in derivatives:
        if own and deriv == output_dir:
            continue
        if output_dir == deriv or output_dir.is_relative_to(deriv) or deriv.is_relative_to(output_dir):
            raise UsageError(f"OUTPUT_DIR {output_dir} overlaps the input derivative dataset {deriv}; choose a separate folder")
    return derivatives


def _own_outputs(table, output_dir):
    """The index without the group level's own maps in OUTPUT_DIR (``model-<label>_...``, e.g. computed subject maps)."""
    paths = table["path"].map(Path)
    own = paths.map(lambda p: p.is_relative_to(output_dir) and p.name.startswith("model-"))
    return table[~own].reset_index(drop=True)


def _merge_filters(*sources):
    merged = {}
    for source in sources:
        for key, values in source.items():
            merged[key] = list(values)
    return merged


def _cli_filters(inputs):
    from_file = inputs_stage.load_bids_filter_file(inputs.bids_filter_file) if inputs.bids_filter_file else {}
    return _merge_filters(from_file, inputs_stage.parse_filter_args(list(inputs.filter)))


def _value_matches(series, wanted):
    """Rows whose value is one of ``wanted`` (numbers compared as numbers, else level names)."""
    if None in wanted:
        return series.isna()
    if is_numeric(series.dropna()):
        numbers = pd.to_numeric(pd.Series(wanted, dtype=object), errors="coerce")
        if numbers.notna().all():
            return series.isin(numbers.tolist())
    return level_labels(series).isin([str(w) for w in wanted])


def contrast_names(wanted):
    """The first-level contrast labels that a model's contrast names may be written as in file names.

    A model names contrasts as written (``task_vs_baseline``,
    ``trial_type.word``, ``a-b``); the ``contrast-<label>`` of the maps is
    that name, FitLins's label of it (``taskVsBaseline``, ``trialTypeWord``,
    ``aB``: :func:`~bids_group_app.model.graph.fitlins_label`) or nilearn's
    (``aMinusB``: :func:`~bids_group_app.outputs.naming.sanitize_label`).
    """
    names = []
    for value in wanted:
        for name in (value, fitlins_label(value), sanitize_label(value)) if isinstance(value, str) else (value,):
            if name not in names:
                names.append(name)
    return names


def _apply_node_filters(table, node):
    rows = table
    for key, wanted in node.filters.items():
        if key not in rows.columns:
            raise DataError(f"node '{node.name}' Filter names '{key}', which is neither an entity nor a participants.tsv column")
        kept = rows[_value_matches(rows[key], contrast_names(wanted) if key == "contrast" else wanted)]
        if kept.empty:
            raise NoFilesSelectedError(
                f"node '{node.name}' Filter {key}={','.join(map(str, wanted))} selects no map; values present: {', '.join(levels(rows[key]))}"
            )
        rows = kept
    return rows


def _cells(table, node, entity_columns):
    for key in node.group_by:
        if key not in table.columns:
            available = [c for c in table.columns if c not in ("path", MATCHED) and table[c].notna().any()]
            raise DataError(f"node '{node.name}' GroupBy names '{key}', not an entity or participants.tsv column; available: {', '.join(available)}")
    if not node.group_by:
        yield {}, table
        return
    keys = list(node.group_by)
    present = table.dropna(subset=keys)
    label_of = {k: dict(zip(present[k], level_labels(present[k]))) for k in keys}  # named as Factor names levels
    for values, rows in present.groupby(keys, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        yield {k: label_of[k][v] for k, v in zip(keys, values)}, rows


def x_aliases(node):
    """``{label: X entry}``: the file-name labels (:func:`contrast_names`) an X entry naming a first-level
    contrast may have (``trialTypeWord`` for ``trial_type.word``)."""
    aliases = {}
    for entry in node.x:
        for name in contrast_names([entry]):
            aliases.setdefault(str(name), entry)
    return aliases


def _check_collisions(rows, node, group_values, entity_columns, aliases, run_maps=False):
    """One map per subject per cell, unless the design tells the maps of a subject apart.

    They are told apart by an entity the design names (X naming ``contrast``
    or one of its values) and, for a node fed run-level maps directly
    (``run_maps``), by ``session`` and ``run``: those maps enter as rows, as
    PyBIDS makes them. ``aliases``: :func:`x_aliases` of the node.
    """
    def in_design(entity):
        return entity in node.x or any(str(v) in aliases for v in rows[entity].dropna().unique())

    within = [e for e in entity_columns if e != "subject" and e in rows.columns and e not in node.group_by
              and (in_design(e) or (run_maps and e in ("session", "run")))]
    keys = ["subject"] + [k for k in node.group_by if k in rows.columns and k != "subject"] + within
    collisions = inputs_stage.find_collisions(rows, keys)
    if collisions:
        first = collisions[0]
        where = ", ".join(f"{k}={v}" for k, v in group_values.items()) or "the model"
        varying = [c for c in entity_columns if c in rows.columns and rows[rows["path"].isin(first)][c].nunique(dropna=False) > 1]
        raise DataError(
            f"{len(collisions)} subject(s) have more than one map in {where} (one map per subject per cell is needed), "
            f"e.g. {', '.join(Path(p).name for p in first)}; they differ by {', '.join(varying) or 'path'}: select one with --filter, or add it to GroupBy"
        )


def _warn_repeated(design, node, group_values):
    """Say so when a subject's maps enter a design without subject columns as separate rows."""
    if not design.repeated_subjects:
        return
    subjects = design.rows["subject"]
    where = ", ".join(f"{k}={v}" for k, v in group_values.items())
    LOGGER.warning("node '%s'%s: %d maps of %d subjects enter as separate rows, as the model is written (its X has "
                   "no subject columns); the parametric tests treat them as independent, and permutations flip "
                   "each subject's maps together", node.name, f" ({where})" if where else "", len(subjects),
                   subjects.nunique())


def _attach_variances(design, node, known_paths, settings):
    """Give a cell with FEMA contrasts the ``stat-variance`` map of each of its maps (``_variance``).

    Raises
    ------
    DataError
        Naming the effect maps that have no variance map beside them.
    UsageError
        When the node smooths its inputs (smoothed effects with unsmoothed
        variances would be a wrong fixed-effects combination).
    """
    names = ", ".join(c.name for c in design.contrasts if c.fixed_effects)
    if settings.estimation.smoothing_fwhm:
        raise UsageError(f"node '{node.name}': FEMA contrast(s) {names} combine effect and variance maps, which "
                         "--smoothing-fwhm would make inconsistent; run it without smoothing")
    variances = [_variance_path(p) for p in design.rows["path"]]
    absent = [v or f"(no stat-effect in {Path(p).name})" for p, v in zip(design.rows["path"], variances)
              if v not in known_paths]
    if absent:
        raise DataError(f"node '{node.name}': FEMA contrast(s) {names} need the stat-variance map of each input "
                        f"effect map; missing: {', '.join(Path(a).name for a in absent[:5])}"
                        + (f" and {len(absent) - 5} more" if len(absent) > 5 else ""))
    design.rows["_variance"] = variances


def _node_maps(table, label):
    return table[table["node"] == label]


def _route(graph, node_name, table):
    """The source of a Dataset node's maps (None: every selected map, as without a graph)."""
    edge = graph.incoming(node_name)
    if edge is None:
        return None
    source = graph.lower[edge.source]  # Dataset sources are chained, not routed (:func:`_chain_rows`)
    present = sorted(table["node"].dropna().unique())
    if source.label in present:
        return Route(edge, _node_maps(table, source.label))
    upstream = graph.incoming(source.name) if source.level in ("subject", "session") else None
    runs = graph.lower.get(upstream.source) if upstream is not None else None
    if runs is not None and runs.label in present:
        problem = source.problem or (None if "subject" in source.group_by else
                                     f"node '{source.name}' GroupBy {list(source.group_by)} lacks subject")
        if problem:
            raise UsageError(f"{edge.describe()}: the derivatives hold no node-{source.label}/ maps, and node "
                             f"'{source.name}' cannot be computed from the node-{runs.label}/ maps: {problem}")
        rows = _node_maps(table, runs.label)
        if upstream.filters:
            rows = inputs_stage.select_maps(rows, upstream.filters)
        return Route(edge, rows, source)
    raise NoFilesSelectedError(
        f"{edge.describe()}: the derivatives hold no maps of node '{source.name}' (FitLins folder node-{source.label}/); "
        f"node folders found: {', '.join('node-' + p for p in present)}")


def _select_routed(routes, table, filters, participant_labels):
    """Select each route's maps with the filters whose entities they have.

    A filter no route's maps can apply is an error (as :func:`select_maps` says);
    one skipped for some maps only is logged as a warning.
    """
    selected, skipped = {}, {}
    for name, route in routes.items():
        rows = table if route is None else route.rows
        applied, skipped[name] = inputs_stage.filters_present(rows, filters)
        selected[name] = inputs_stage.select_maps(rows, applied, participant_labels)
    for entity in filters:
        if all(entity in skips for skips in skipped.values()):  # no selected map has it: is it anywhere?
            inputs_stage.select_maps(table, {entity: filters[entity]})
        for name, skips in skipped.items():
            if entity in skips and routes[name] is not None:
                LOGGER.warning("filter %s=%s does not apply to the maps of node-%s/ that feed node '%s': they have no "
                               "'%s' entity", entity, ",".join(map(str, filters[entity])),
                               routes[name].rows["node"].iloc[0], name, entity)
    return selected


def _varying(rows, keys):
    ignored = {"path", "dataset", "run", "stat", *keys}
    return [c for c in rows.columns if c not in ignored and rows[c].nunique(dropna=False) > 1]


def _variance_path(effect_path):
    """The ``stat-variance`` map beside a ``stat-effect`` map (None when the name has no ``stat-effect``)."""
    folder, name = effect_path.rsplit("/", 1) if "/" in effect_path else ("", effect_path)
    if "_stat-effect_" not in f"_{name}":
        return None
    return f"{folder}/" * bool(folder) + f"_{name}".replace("_stat-effect_", "_stat-variance_", 1)[1:]


def _subject_jobs(route, rows, table):
    """One :class:`ComputedMap` per subject, GroupBy cell and contrast of the route's Subject node."""
    node = route.subject_node
    missing = [k for k in node.group_by if k not in rows.columns]
    if missing:
        raise DataError(f"node '{node.name}' GroupBy names {', '.join(missing)}, not an entity of the node-"
                        f"{rows['node'].iloc[0]}/ maps")
    paths = set(table["path"])
    jobs = []
    for _, runs in rows.groupby(list(node.group_by), sort=True):
        varying = [c for c in _varying(runs, node.group_by) if not (c == "session" and node.level == "subject")]
        if varying:
            raise DataError(f"node '{node.name}': the maps of one GroupBy cell differ by {', '.join(varying)} "
                            f"(e.g. {', '.join(Path(p).name for p in runs['path'][:2])}); add it to the node's GroupBy")
        runs = runs.sort_values("path")
        variances = []
        if node.fixed_effects:
            variances = [_variance_path(p) for p in runs["path"]]
            absent = [v or f"(no stat-effect in {p})" for p, v in zip(runs["path"], variances) if v not in paths]
            if absent:
                raise DataError(f"node '{node.name}' combines runs by fixed effects, which needs each run's "
                                f"stat-variance map; missing: {', '.join(absent[:5])}"
                                + (f" and {len(absent) - 5} more" if len(absent) > 5 else ""))
        first = runs.iloc[0]
        entities = {k: first[k] for k in ENTITY_KEYS if k not in ("contrast", "run", "node") and k in runs.columns
                    and runs[k].notna().all() and runs[k].nunique() == 1}
        unique = runs["contrast"].dropna().unique() if "contrast" in runs.columns else []
        incoming = str(unique[0]) if len(unique) == 1 else None
        for name, weight in node.contrasts:
            contrast = computed_contrast_name(name, incoming)
            jobs.append(ComputedMap(node, str(first["subject"]), entities, str(contrast), weight,
                                    list(runs["path"]), variances))
    return jobs


def computed_contrast_name(name, incoming):
    """The name of a computed subject-level contrast, as PyBIDS names it (``_build_contrasts``).

    ``name`` is the node's contrast name (None for DummyContrasts, whose
    contrast is the intercept, PyBIDS's ``1``); ``incoming`` the one
    first-level contrast of the GroupBy cell (None when several enter).
    The intercept takes the incoming name (else ``intercept``); another
    name is prefixed with it: ``gain_neg``.

    >>> computed_contrast_name(None, "gain"), computed_contrast_name("neg", "gain"), computed_contrast_name("1", None)
    ('gain', 'gain_neg', 'intercept')
    """
    if name in (None, "1"):
        return incoming or "intercept"
    return f"{incoming}_{name}" if incoming else name


def _computed_rows(jobs, label, output_dir, columns):
    """Index rows of the computed maps (paths in OUTPUT_DIR), named with the model label."""
    records, seen = [], {}
    for job in jobs:
        job.relpaths = {stat: computed_map(label, job.node.name, job.subject, job.entities, job.contrast, stat)
                        for stat in ("effect", "variance", "t", "z")}
        other = seen.setdefault(job.relpaths["effect"], job)
        if other is not job:
            raise UsageError(f"node '{job.node.name}': two of its sub-{job.subject} maps would both be named "
                             f"{Path(job.relpaths['effect']).name} (contrasts {other.contrast!r} and {job.contrast!r} "
                             "as BIDS labels); rename one, or add the entity that tells them apart to its GroupBy")
        records.append({"path": str(output_dir / job.relpaths["effect"]), "dataset": output_dir.name,
                        **job.entities, "subject": job.subject, "contrast": job.contrast,
                        "node": job.node.label, "stat": "effect", "suffix": "statmap", "extension": ".nii.gz"})
    return pd.DataFrame.from_records(records, columns=columns)


def chain_edge(model, name):
    """The edge into Dataset node ``name`` from another Dataset node (None when it is fed otherwise)."""
    graph = model.graph if model is not None else None
    edge = graph.incoming(name) if graph is not None else None
    return edge if edge is not None and graph.levels.get(edge.source) == "dataset" else None


def _planning_order(model):
    """The Dataset nodes, each after the Dataset node that feeds it (document order otherwise)."""
    order, placed = [], set()
    pending = list(model.nodes)
    while pending:
        ready = [n for n in pending if chain_edge(model, n.name) is None or chain_edge(model, n.name).source in placed]
        if not ready:
            raise UsageError("the Dataset→Dataset edges of the model form a cycle: "
                             + ", ".join(chain_edge(model, n.name).describe() for n in pending))
        order.append(ready[0])
        placed.add(ready[0].name)
        pending.remove(ready[0])
    return order


def _chain_rows(edge, cells, output_dir):
    """Index rows of the outputs of Dataset node ``edge.source`` (its planned ``cells``) that feed the next node.

    One row per cell and contrast with an effect map (an F contrast has none:
    it is left out, with a warning): ``path`` (in OUTPUT_DIR, written by
    this run), the cell's GroupBy values, ``contrast`` (PyBIDS's name of the
    output: :func:`computed_contrast_name` of the contrast and the cell's
    incoming contrast) and ``_relpaths`` (effect and variance).
    """
    records, skipped = [], []
    for cell in cells:
        incoming = cell.group_values.get("contrast")
        for contrast in cell.design.contrasts:
            if contrast.test == "F":
                skipped.append(contrast.name)
                continue
            name = None if contrast.name in ("intercept", "Intercept", "1") else contrast.name
            relpaths = {stat: cell.names.statmap(contrast.name, stat) for stat in ("effect", "variance")}
            records.append({**{k: v for k, v in cell.group_values.items()},
                            "path": str(output_dir / relpaths["effect"]), "dataset": output_dir.name,
                            "subject": None, "contrast": computed_contrast_name(name, incoming),
                            "node": fitlins_label(edge.source), "stat": "effect", "_relpaths": relpaths})
    if skipped:
        LOGGER.warning("%s: F contrast(s) %s have no effect map and do not feed node '%s'", edge.describe(),
                       ", ".join(sorted(set(skipped))), edge.destination)
    if not records:
        raise UsageError(f"{edge.describe()}: node '{edge.source}' outputs no effect map (only F contrasts) "
                         f"for node '{edge.destination}' to fit")
    return pd.DataFrame.from_records(records)


def _routes(model, table):
    """``{Dataset node: Route or None}`` when the maps are FitLins nodes' (None otherwise).

    Nodes fed by another Dataset node are not routed (:func:`_chain_rows`).
    """
    if model is None or model.graph is None or "node" not in table.columns or table["node"].isna().all():
        return None
    routes = {node.name: _route(model.graph, node.name, table) for node in model.nodes
              if chain_edge(model, node.name) is None}
    return routes if any(r is not None for r in routes.values()) else None


def _pin_settings(document, config, surface=False):
    """Resolve each Dataset node's analysis settings and write them into the
    document (``Model.Software.bids_group_app``), so the saved model pins them
    (``surface``: the maps are on a mesh, see :data:`~bids_group_app.config.SURFACE_DEFAULTS`).

    Returns
    -------
    dict
        ``{node name: AnalysisSettings}``.
    """
    settings = {}
    for index, node in enumerate(document["Nodes"]):
        if str(node.get("Level", "")).lower() != "dataset":
            continue
        node.setdefault("Name", f"node{index}")  # as model.spec names an unnamed node
        model = node.setdefault("Model", {})
        software = model.setdefault("Software", {})
        own = software.get(SOFTWARE_KEY) or {}
        if not isinstance(own, dict):
            raise UsageError(f"node '{node.get('Name')}': Model.Software.{SOFTWARE_KEY} must be an object, got {own!r}")
        resolved = node_settings(config, own, SURFACE_DEFAULTS if surface else DEFAULTS)
        check_settings(resolved, f"node '{node.get('Name')}'")
        sharded = config.permutation.perm_shard or config.permutation.merge_perm_shards
        if sharded and not resolved.permutation.n_perm:
            raise UsageError(f"--perm-shard/--merge-perm-shards need permutations, but node '{node['Name']}' has none: "
                             "give --n-perm N with N > 0")
        software[SOFTWARE_KEY] = {**own, **software_options(resolved)}
        settings[str(node["Name"])] = resolved
    return settings


def plan(config):
    """Check inputs and model and build every cell's design.

    Parameters
    ----------
    config : bids_group_app.config.Config

    Raises
    ------
    AppError subclasses, each with its exit code.
    """
    inputs, model_options = config.inputs, config.model
    bids_dir, output_dir = check_paths(inputs)
    model = load_model(model_options.model) if model_options.model else None
    derivatives = _derivatives(inputs, bids_dir, output_dir)
    table = _own_outputs(inputs_stage.index_maps(bids_dir, derivatives, database_dir=inputs.bids_database_dir),
                         output_dir)
    if table.empty:
        raise MissingInputError(f"no image with a sub-<label> entity in {', '.join(map(str, derivatives))}")
    participants = read_participants(bids_dir)
    cli_filters = _cli_filters(inputs)
    labels = [strip_sub(p) for p in inputs.participant_label]

    if model is None:
        pre = _merge_filters(inputs_stage.default_filters(table), cli_filters)
        selected = inputs_stage.select_maps(table, pre, labels or None)
        document = model_from_options(model_options, selected, participants)
        model_filters = document["Input"]
    else:
        document = json.loads(json.dumps(model.document))
        model_filters = model.input_filters
    subject_filter = model_filters.get("subject")
    explicit = _merge_filters({k: v for k, v in model_filters.items() if k != "subject"}, cli_filters)
    filters = _merge_filters({k: v for k, v in inputs_stage.default_filters(table).items() if k not in explicit}, explicit)
    routes = _routes(model, table)
    if routes is None:
        selected = inputs_stage.select_maps(table, filters, labels or subject_filter or None)
    else:
        routed = _select_routed(routes, table, filters, labels or subject_filter or None)
        selected = pd.concat(list(routed.values())).drop_duplicates(subset="path").reset_index(drop=True)
    if model is None and not model_options.group_by:
        document["Nodes"][0]["GroupBy"] = auto_group_by(selected, exclude=list(document["Input"]))
    document["Input"] = {**filters, **({"subject": sorted(selected["subject"].unique())} if labels or subject_filter else {})}
    model = parse_model(document)
    settings = _pin_settings(document, config, surface=bool(
        selected["extension"].isin(inputs_stage.SURFACE_EXTENSIONS).any()) if "extension" in selected else False)
    label = model_label(output_dir, document)
    if label != sanitize_label(document.get("Name", "model")):
        LOGGER.warning("OUTPUT_DIR holds another model named %s; this one is saved as %s (its files are named "
                       "model-%s_...)", document.get("Name"), model_file(label), label)

    entity_columns = [c for c in table.columns if c not in ("path", "dataset")]
    inputs_of, computed = {}, []
    if routes is not None:
        for name, route in routes.items():
            rows = routed[name]
            if route is not None and route.subject_node is not None:
                jobs = _subject_jobs(route, rows, table)
                rows = _computed_rows(jobs, label, output_dir, table.columns)
                computed.extend(jobs)
            inputs_of[name] = rows
        selected = pd.concat(list(inputs_of.values())).drop_duplicates(subset="path").reset_index(drop=True)
    joined, report = join_participants(selected, participants, entity_columns,
                                       chosen=labels or subject_filter or filters.get("subject"))
    result = Plan(bids_dir, output_dir, derivatives, document, filters, participants_report=report,
                  model_label=label, computed=computed)
    keys = set()
    known_paths = set(table["path"]) | {str(output_dir / job.relpaths["variance"]) for job in computed}
    cells_of = {}
    for node in _planning_order(model):
        chain = chain_edge(model, node.name)
        if chain is not None:
            rows = _chain_rows(chain, cells_of[chain.source], output_dir)
            known_paths |= {str(output_dir / r["variance"]) for r in rows["_relpaths"]}
        elif routes is None:
            rows = joined
        else:
            rows = joined[joined["path"].isin(set(inputs_of[node.name]["path"]))]
        rows = _apply_node_filters(rows, node)
        route = routes.get(node.name) if routes is not None else None
        run_maps = (route is not None and route.subject_node is None
                    and model.graph.levels.get(route.edge.source) == "run")
        cells_of[node.name] = []
        aliases = x_aliases(node)
        for group_values, cell_rows in _cells(rows, node, entity_columns):
            if chain is None:
                _check_collisions(cell_rows, node, group_values, entity_columns, aliases, run_maps)
            else:
                result.chained.extend(rel for r in cell_rows["_relpaths"] for rel in r.values())
            design = build_design(cell_rows.reset_index(drop=True), node, entity_columns, aliases)
            _warn_repeated(design, node, group_values)
            if any(c.fixed_effects for c in design.contrasts):
                _attach_variances(design, node, known_paths, settings[node.name])
            names = CellNames(label, node.name, cell_entities(group_values))
            contrasts = [sanitize_label(c.name) for c in design.contrasts]
            duplicates = sorted({n for n in contrasts if contrasts.count(n) > 1})
            if duplicates:
                raise UsageError(f"contrast names of node '{node.name}' collide once made BIDS labels: {', '.join(duplicates)}; rename them")
            if names.key in keys:
                raise UsageError(f"two nodes are named '{sanitize_label(node.name)}' once made BIDS labels; rename one")
            keys.add(names.key)
            result.cells.append(Cell(node, group_values, design, names, settings[node.name]))
            cells_of[node.name].append(result.cells[-1])
    LOGGER.info("planned %d model cell(s) from %d maps", len(result.cells), len(selected))
    return result


