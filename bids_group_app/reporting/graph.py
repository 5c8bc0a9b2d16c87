"""The graph of a BIDS Stats Model as it ran, for the report and the methods text.

Read from the saved model document and the design sidecars of OUTPUT_DIR:
each node with its level, the edges into it, and for the nodes this app
fit, how many cells and maps, and where the maps came from; for the Run and
Subject nodes the participant level fit, how many maps of how many subjects.
"""

from __future__ import annotations

from bids_group_app.model.graph import parse_graph
from bids_group_app.outputs.dataset import read_result_json
from bids_group_app.outputs.naming import computed_sidecars, participant_sidecars


def model_edges(model):
    """The edges of a model document (:func:`~bids_group_app.model.graph.parse_graph`:
    its ``Edges``, or each node feeding the next in ``Nodes`` order).

    Returns
    -------
    list of dict
        ``{"Source", "Destination", "Filter"}`` each; filter values as text.
    """
    return [{"Source": e.source, "Destination": e.destination,
             "Filter": {k: ", ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in e.filters.items()}}
            for e in parse_graph(model).edges]


def consumed(inputs):
    """Where the maps of a cell came from, ``{"<dataset>[ node-<X>]": count}``.

    Parameters
    ----------
    inputs : list of str
        The ``bids:<dataset>:<path>`` URIs of a design sidecar (``Inputs``);
        ``bids::<path>`` (maps this app wrote in OUTPUT_DIR) count as ``OUTPUT_DIR``.
    """
    sources = {}
    for uri in inputs:
        _, dataset, path = (str(uri).split(":", 2) + ["", ""])[:3]
        dataset = dataset or "OUTPUT_DIR"
        folder = path.split("/", 1)[0]
        where = f"{dataset} {folder}" if folder.startswith("node-") else dataset
        sources[where] = sources.get(where, 0) + 1
    return sources


def model_graph(model, fitted):
    """The nodes of a model as it ran.

    Parameters
    ----------
    model : dict
        The saved model document.
    fitted : dict
        ``{node name: [design sidecar, ...]}`` of the cells in OUTPUT_DIR
        (each with ``NumberOfMaps`` and ``Inputs``), and for the lower-level
        nodes the app computed, the sidecars of their subject maps (each
        with ``Node`` and ``Method``).

    Returns
    -------
    list of dict
        One per node, in ``Nodes`` order: ``name``, ``level``, ``group_by``,
        ``model_type``, ``inputs`` (the edges into it), ``ran`` (whether its
        results are in OUTPUT_DIR), ``cells``, ``maps`` and ``consumed``
        (:func:`consumed`, summed over its cells); for a computed lower-level
        node, ``computed`` (its number of subject maps) and ``methods``; for
        a node the participant level fit, ``participant`` (its number of
        maps), ``participant_subjects`` and ``methods``.
    """
    edges = model_edges(model)
    graph = []
    for index, node in enumerate(model.get("Nodes") or []):
        name = node.get("Name", f"node{index}")
        cells = fitted.get(name) or []
        sources = {}
        for sidecar in cells:
            for where, count in consumed(sidecar.get("Inputs") or []).items():
                sources[where] = sources.get(where, 0) + count
        computed = [c for c in cells if "Method" in c and not c.get("Participant")]
        participant = [c for c in cells if c.get("Participant")]
        graph.append({
            "computed": len(computed), "methods": sorted({c["Method"] for c in computed + participant}),
            "participant": len(participant),
            "participant_subjects": len({c.get("Subject") for c in participant}),
            "name": name, "level": node.get("Level"), "group_by": node.get("GroupBy") or [],
            "model_type": (node.get("Model") or {}).get("Type", "glm"),
            "inputs": [e for e in edges if e["Destination"] == name],
            "ran": bool(cells), "cells": len(cells),
            "maps": sum(s.get("NumberOfMaps") or 0 for s in cells if "Method" not in s), "consumed": sources,
        })
    return graph


def fitted_nodes(output_dir, model_label, designs):
    """The ``fitted`` argument of :func:`model_graph` for a model of OUTPUT_DIR.

    Parameters
    ----------
    output_dir : path-like or bids_group_app.outputs.view.OutputView
    model_label : str
    designs : dict
        ``{Dataset node name: [design sidecar, ...]}``.

    Returns
    -------
    dict
        ``designs`` with, for each lower-level node the app computed, the
        sidecars of its subject maps, and for each node the participant
        level fit, the sidecars of its maps (one per contrast: effect or F),
        marked ``Participant``.
    """
    fitted = {name: list(sidecars) for name, sidecars in designs.items()}
    for path in computed_sidecars(output_dir, model_label):
        sidecar = read_result_json(path)
        fitted.setdefault(sidecar.get("Node"), []).append(sidecar)
    for path in participant_sidecars(output_dir):
        sidecar = read_result_json(path)
        subject = path.name.split("_", 1)[0][len("sub-"):]
        fitted.setdefault(sidecar.get("Node"), []).append({**sidecar, "Participant": True, "Subject": subject})
    return fitted
