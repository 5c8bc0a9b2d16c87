"""OUTPUT_DIR as its readers see it.

A run renders its report and methods text *before* it commits, so that
nothing can fail once its results are in place: they must then read the
dataset as it will be after the commit, that is the committed files of
OUTPUT_DIR with the run's staged files over them. :class:`OutputView` is
that union; every reader of OUTPUT_DIR (report, methods text, saved models,
``--reports-only``) goes through it, by way of the functions of
:mod:`.naming` and :mod:`.dataset` that accept a view or a plain path.
"""

from __future__ import annotations

from pathlib import Path


class OutputView:
    """The files of OUTPUT_DIR, with those of a staging folder over them.

    Parameters
    ----------
    output_dir : path-like
        OUTPUT_DIR (the committed files).
    staging : path-like, optional
        A staging folder whose layout mirrors OUTPUT_DIR; its files hide the
        committed files of the same relative path.

    ``view / relpath`` is the path a reader opens: the staged file when
    there is one, else the committed one (which may not exist).
    """

    def __init__(self, output_dir, staging=None):
        self.root = Path(output_dir)
        self.layers = tuple(Path(p) for p in (staging, output_dir) if p is not None)

    def __truediv__(self, relpath):
        return self.path(relpath)

    def __repr__(self):
        return f"OutputView({', '.join(str(p) for p in self.layers)})"

    def path(self, relpath):
        """The file a reader opens for ``relpath`` (the top layer that has it)."""
        for layer in self.layers:
            candidate = layer / relpath
            if candidate.exists():
                return candidate
        return self.root / relpath

    def glob(self, pattern):
        """The relative paths matching ``pattern`` in any layer, sorted, each once."""
        found = set()
        for layer in self.layers:
            found.update(p.relative_to(layer).as_posix() for p in layer.glob(pattern))
        return [Path(p) for p in sorted(found)]


def as_view(output_dir):
    """``output_dir`` as an :class:`OutputView` (a plain path: its committed files)."""
    return output_dir if isinstance(output_dir, OutputView) else OutputView(output_dir)
