#!/usr/bin/env python3
"""Run every model of the BIDS Stats Models corpus and write its STATUS.md.

Usage::

    .venv/bin/python scripts/corpus_status.py [--print-xfails]

Each model of ``tests/data/bsm_corpus`` runs on data made for it
(``tests/corpus_data.py``) with ``bids_group_app BIDS_DIR OUT group --model
FILE --no-reports`` in-process. ``tests/data/bsm_corpus/STATUS.md`` gets the
tally (ran / failed, per cause) and one line per model. ``--print-xfails``
also prints the ``KNOWN_FAILURES`` dict for ``tests/model/test_corpus.py``.
A model that runs here is checked in detail by that test, not here.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from corpus_data import CORPUS_DIR, corpus_models, run_corpus_model  # noqa: E402

# Ordered (pattern, cause) pairs grouping error lines into causes; the first match wins.
CAUSES = [
    (r"has no Nodes list", "the document uses the pre-1.0 `Steps` key, not `Nodes`"),
    (r"no Dataset-level node", "no Dataset-level node: a Run-level only model, for the participant level (issue 11)"),
    (r"design column '(\w+)' holds non-numeric values", r"a text column (`\1`) in X with no Factor: PyBIDS passes "
                                                          r"the text into the design, which no GLM can fit"),
    (r"names C\(\w+\)\[T\.", "the contrast names treatment-coded columns (`C(x)[T.level]`) of a Formula "
                                "without intercept (`0 + C(x)`, full coding): PyBIDS drops it too, leaving none"),
    (r"more than one map.*differ by contrast", "several maps per subject in one cell: a Dataset node whose X names "
                                                "first-level contrasts (a within-subject design without subject columns)"),
    (r"more than one map.*differ by run", "several maps per subject in one cell: a Dataset node fed by run-level maps "
                                          "directly (no Subject node to combine the runs)"),
    (r"more than one map", "more than one map per subject per cell"),
    (r"not estimable", "a contrast not estimable on the data made for it (the generator's participants columns)"),
    (r"VarianceComponents", "the draft key `Model.VarianceComponents` (mixed effects, issue 13): refused by "
                            "name, exit 64"),
    (r"transformation '(\w+)' is not supported", r"transformation `\1` not supported"),
    (r"Test must be one of t, F, got '(\w+)'", r"contrast Test `\1` not supported"),
    (r"Filter contrast=.* selects no map", "edge Filter names contrasts as in the model; FitLins labels them "
                                          "camelCase (`to_alphanum`)"),
    (r"Type '(\w+)'|only Model.Type", "Model.Type other than glm"),
]


def cause_of(error):
    """The cause an error line belongs to (its first matching pattern), else the line itself."""
    for pattern, cause in CAUSES:
        match = re.search(pattern, error)
        if match:
            return match.expand(cause)
    return error


def run_all():
    """``[(relpath, exit code, error line)]`` for every corpus model."""
    from bids_group_app.cli.run import main

    results = []
    for rel in corpus_models():
        with tempfile.TemporaryDirectory() as work:
            result = run_corpus_model(rel, work, main)
        results.append((rel, result["code"], result["error"]))
        print(f"{rel}: exit {result['code']} {result['error']}", file=sys.stderr)
    return results


def status_markdown(results):
    """STATUS.md text: tally, causes with counts, one row per model."""
    failed = [(rel, code, err) for rel, code, err in results if code != 0]
    causes = Counter(cause_of(err) for _, _, err in failed)
    lines = ["# BIDS Stats Models corpus: status", "",
             "Written by `scripts/corpus_status.py` (do not edit by hand). Each model runs as published on",
             "FitLins-layout data made for it (`tests/corpus_data.py`); `tests/model/test_corpus.py` checks the",
             "t and F maps of those that run against numpy OLS.", "",
             f"**{len(results)} models: {len(results) - len(failed)} ran, {len(failed)} failed.**", "",
             "| failures | cause |", "|---:|---|"]
    lines += [f"| {n} | {cause} |" for cause, n in causes.most_common()]
    lines += ["", "| model | exit | error line |", "|---|---:|---|"]
    lines += [f"| {rel} | {code} | {err.replace('|', '/')} |" for rel, code, err in results]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-xfails", action="store_true", help="print KNOWN_FAILURES for test_corpus.py")
    args = parser.parse_args(argv)
    results = run_all()
    (CORPUS_DIR / "STATUS.md").write_text(status_markdown(results))
    if args.print_xfails:
        print("KNOWN_FAILURES = {")
        for rel, code, err in results:
            if code != 0:
                print(f"    {rel!r}:\n        {err!r},")
        print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
