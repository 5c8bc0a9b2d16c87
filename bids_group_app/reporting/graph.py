"""The graph of a BIDS Stats Model as it ran, for the report and the methods text.

Read from the saved model document and the design sidecars of OUTPUT_DIR:
each node with its level, the edges into it, and for the nodes this app
fit, how many cells and maps, and where the maps came from.
"""

from __future__ import annotations


def model_edges(model):
    """The edges of a model document: its ``Edges``, or (when absent) each node
    feeding the next in ``Nodes`` order, as the specification says.

    Returns
    -------
    list of dict
        ``{"Source", "Destination", "Filter"}`` each; filter values as text.
    """
    nodes = [n for n in model.get("Nodes") or [] if isinstance(n, dict)]
    if model.get("Edges"):
        edges = [e for e in model["Edges"] if isinstance(e, dict)]
    else:
        names = [n.get("Name") for n in nodes]
        edges = [{"Source": a, "Destination": b} for a, b in zip(names, names[1:])]
    return [{"Source": e.get("Source"), "Destination": e.get("Destination"),
             "Filter": {k: ", ".join(map(str, v)) if isinstance(v, list) else str(v)
                        for k, v in (e.get("Filter") or {}).items()}} for e in edges]


def consumed(inputs):
    """Where the maps of a cell came from, ``{"<dataset>[ node-<X>]": count}``.

    Parameters
    ----------
    inputs : list of str
        The ``bids:<dataset>:<path>`` URIs of a design sidecar (``Inputs``).
    """
    sources = {}
    for uri in inputs:
        _, dataset, path = (str(uri).split(":", 2) + ["", ""])[:3]
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
        (each with ``NumberOfMaps`` and ``Inputs``).

    Returns
    -------
    list of dict
        One per node, in ``Nodes`` order: ``name``, ``level``, ``group_by``,
        ``model_type``, ``inputs`` (the edges into it), ``ran`` (whether its
        results are in OUTPUT_DIR), ``cells``, ``maps`` and ``consumed``
        (:func:`consumed`, summed over its cells).
    """
    edges = model_edges(model)
    graph = []
    for node in model.get("Nodes") or []:
        if not isinstance(node, dict):
            continue
        name = node.get("Name")
        cells = fitted.get(name) or []
        sources = {}
        for sidecar in cells:
            for where, count in consumed(sidecar.get("Inputs") or []).items():
                sources[where] = sources.get(where, 0) + count
        graph.append({
            "name": name, "level": node.get("Level"), "group_by": node.get("GroupBy") or [],
            "model_type": (node.get("Model") or {}).get("Type", "glm"),
            "inputs": [e for e in edges if e["Destination"] == name],
            "ran": bool(cells), "cells": len(cells),
            "maps": sum(s.get("NumberOfMaps") or 0 for s in cells), "consumed": sources,
        })
    return graph
