"""The node graph of a BIDS Stats Models document: edges and lower-level nodes.

:func:`parse_graph` reads the ``Edges`` of a document (or, when it has
none, the specification's implicit chaining: each node feeds the next one in
``Nodes`` order) and the Run/Session/Subject nodes that
:mod:`bids_group_app.model.spec` does not fit itself. The workflow uses it to
decide which maps enter each Dataset node (see
:mod:`bids_group_app.workflow.plan`):

* the Source node of the edge into a Dataset node names the FitLins folder
  ``node-<label>/`` whose maps are selected (:func:`fitlins_label`);
* a Subject or Session node whose maps are not in the derivatives is
  computed from its own source's (run-level) maps when it only combines
  runs: fixed effects (``Model.Type: "meta"`` or ``Test: "FEMA"``) or an OLS
  of the runs on an intercept (``Model.Type: "glm"``, ``X: [1]``)
  (:class:`LowerNode`).

FitLins folder names
--------------------
FitLins (``fitlins/workflows/base.py``, ``fitlins/interfaces/bids.py``)
writes a node's maps under ``node-{node}/`` with ``node`` =
``to_alphanum(snake_to_camel(Name.replace('-', '_')))``: ``-`` becomes
``_``, the name is split into words at ``_`` and each word after the first
is written ``str.title()`` style (first letter upper case, the rest lower
case); then every other non-alphanumeric character becomes ``_`` and the
same camel-casing is applied again. ``runLevel`` stays
``runLevel``; ``run-level`` and ``run_level`` become ``runLevel``;
``Subject level`` becomes ``SubjectLevel``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bids_group_app.errors import UsageError

LEVELS = ("run", "session", "subject", "dataset")
#: Tests that ask for a fixed-effects combination (FitLins spells it FEMA).
FIXED_EFFECTS_TESTS = ("FEMA",)


def fitlins_label(name):
    """The label FitLins gives node ``name`` in its ``node-<label>/`` folder.

    >>> fitlins_label("runLevel"), fitlins_label("subject-level"), fitlins_label("by subject")
    ('runLevel', 'subjectLevel', 'bySubject')
    """
    return _camel(re.sub(r"[^a-zA-Z0-9]", "_", _camel(str(name).replace("-", "_"))))


def _camel(text):
    """FitLins' ``snake_to_camel``: words split at ``_``, later ones ``str.title()``-cased."""
    words = text.split("_")
    return words[0] + "".join(w.title() for w in words[1:])


@dataclass(frozen=True)
class Edge:
    """One edge of the graph: maps flow from ``source`` into ``destination``."""

    source: str
    destination: str
    filters: dict = field(default_factory=dict)
    implicit: bool = False

    def describe(self):
        """``Source -> Destination`` as the message names it."""
        how = " (implicit: the model has no Edges, so each node feeds the next)" if self.implicit else ""
        return f"edge {self.source} -> {self.destination}{how}"


@dataclass(frozen=True)
class LowerNode:
    """A Run, Session or Subject node (first-level work, fit elsewhere or combined here).

    Attributes
    ----------
    name, level : str
        ``level`` lower case.
    model_type : str
        ``Model.Type`` lower case (``glm`` when absent).
    x : tuple
        ``Model.X`` with ``1`` written ``intercept``.
    group_by : tuple
    fixed_effects : bool
        Whether its runs are combined by fixed effects (``Model.Type``
        ``meta``, or a ``Test`` of ``FEMA`` in Contrasts/DummyContrasts).
    contrasts : tuple of (name, weight)
        Its output contrasts over the intercept: ``(None, 1.0)`` for
        DummyContrasts (the input contrast keeps its name).
    problem : str or None
        Why the app cannot compute this node itself (None when it can).
    """

    name: str
    level: str
    model_type: str = "glm"
    x: tuple = ()
    group_by: tuple = ()
    fixed_effects: bool = False
    contrasts: tuple = ()
    problem: str | None = None

    @property
    def label(self):
        """Its FitLins folder label (:func:`fitlins_label`)."""
        return fitlins_label(self.name)


@dataclass
class ModelGraph:
    """The edges of a model and its lower-level nodes, by name."""

    edges: list
    levels: dict  # node name -> level (lower case)
    lower: dict  # node name -> LowerNode (Run/Session/Subject nodes)

    def incoming(self, name):
        """The edge into node ``name`` (None for a node nothing feeds).

        Raises
        ------
        UsageError
            When several edges enter the node (the app fits one input set per node).
        """
        found = [e for e in self.edges if e.destination == name]
        if len(found) > 1:
            raise UsageError(f"node '{name}' has {len(found)} incoming edges ({', '.join(e.describe() for e in found)}); "
                             "this app fits a node on the maps of one source node")
        return found[0] if found else None


def _node_name(raw, index):
    return str(raw.get("Name", f"node{index}"))


def _intercept_contrasts(raw, name):
    """The intercept-only contrasts of a lower node, or (problem, ()) when it has others."""
    contrasts = []
    for contrast in raw.get("Contrasts") or []:
        conditions = ["intercept" if c in (1, "1") else str(c) for c in contrast.get("ConditionList", [])] \
            if isinstance(contrast, dict) else []
        weights = contrast.get("Weights") if isinstance(contrast, dict) else None
        weights = weights[0] if isinstance(weights, list) and len(weights) == 1 and isinstance(weights[0], list) else weights
        weights = weights if isinstance(weights, list) else [weights]
        if conditions != ["intercept"] or len(weights) != 1 or not isinstance(weights[0], (int, float)):
            return f"node '{name}' contrast {contrast.get('Name') if isinstance(contrast, dict) else contrast!r} is not one weight on the intercept", ()
        contrasts.append((str(contrast.get("Name")), float(weights[0])))
    if raw.get("DummyContrasts"):
        contrasts.append((None, 1.0))
    return None, tuple(contrasts)


def _tests(raw):
    tests = [c.get("Test") for c in raw.get("Contrasts") or [] if isinstance(c, dict)]
    dummy = raw.get("DummyContrasts")
    if isinstance(dummy, dict):
        tests.append(dummy.get("Test"))
    return tests


def _lower_node(raw, index, level):
    """Read a Run/Session/Subject node (what :mod:`.spec` skips)."""
    name = _node_name(raw, index)
    model = raw.get("Model") if isinstance(raw.get("Model"), dict) else {}
    model_type = str(model.get("Type", "glm")).lower()
    x = tuple("intercept" if v in (1, "1") else str(v) for v in (model.get("X") or []))
    tests = _tests(raw)
    fixed = model_type == "meta" or any(t in FIXED_EFFECTS_TESTS for t in tests)
    problem, contrasts = _intercept_contrasts(raw, name)
    if problem is None and x != ("intercept",):
        problem = f"node '{name}' Model.X is {list(x)}; only X: [1] (one intercept over the runs) is computed here"
    if problem is None and model_type not in ("glm", "meta"):
        problem = f"node '{name}' Model.Type is {model_type!r}; 'glm' or 'meta' is computed here"
    if problem is None and not contrasts:
        problem = f"node '{name}' has no Contrasts or DummyContrasts, so it outputs no map"
    group_by = tuple(str(g) for g in (raw.get("GroupBy") or []))
    return LowerNode(name, level, model_type, x, group_by, fixed, contrasts, problem)


def _explicit_edges(raw_edges, names):
    edges = []
    for i, edge in enumerate(raw_edges):
        if not isinstance(edge, dict):
            raise UsageError(f"Edges[{i}] must be an object with Source and Destination, got {edge!r}")
        source, destination = edge.get("Source"), edge.get("Destination")
        for role, value in (("Source", source), ("Destination", destination)):
            if str(value) not in names:
                raise UsageError(f"Edges[{i}].{role} {value!r} names no node; nodes are {', '.join(names)}")
        edges.append(Edge(str(source), str(destination), dict(edge.get("Filter") or {})))
    return edges


def parse_graph(document):
    """Read the graph of a (structurally valid) BIDS Stats Models document.

    Parameters
    ----------
    document : dict
        With a ``Nodes`` list of objects whose ``Level`` is valid (checked
        by :func:`bids_group_app.model.spec.parse_model` first).

    Returns
    -------
    ModelGraph

    Raises
    ------
    UsageError
        When an edge is not an object or names a node that does not exist.
    """
    nodes = document["Nodes"]
    names = [_node_name(n, i) for i, n in enumerate(nodes)]
    levels = {name: str(n.get("Level", "")).lower() for name, n in zip(names, nodes)}
    raw_edges = document.get("Edges")
    if raw_edges:
        edges = _explicit_edges(raw_edges, names)
    else:
        edges = [Edge(a, b, implicit=True) for a, b in zip(names, names[1:])]
    lower = {name: _lower_node(n, i, levels[name]) for i, (name, n) in enumerate(zip(names, nodes))
             if levels[name] != "dataset"}
    return ModelGraph(edges, levels, lower)
