"""The numerical and data core of the ``participant`` level (first-level GLMs; issue 11).

No files are written here: paths and a BIDS Stats Model in, arrays and tables out.

:mod:`~bids_group_app.firstlevel.inputs`
    :func:`load_layout`, :func:`find_runs` (:func:`find_subjects_runs`): a subject's fMRIPrep runs
    (preprocessed BOLD, brain mask, confounds) with raw events and TR.
:mod:`~bids_group_app.firstlevel.design`
    :func:`build_graph`, :func:`run_designs`: run design matrices from the
    model's Run node (PyBIDS transformations and ``Model.X``; nilearn's HRF
    convolution, cosine drift and intercept).
:mod:`~bids_group_app.firstlevel.fit`
    :func:`masked_data`, :func:`subject_mask`, :func:`fit_run`,
    :func:`run_contrast`, :func:`combine_runs`, :func:`fit_subject`: nilearn
    run GLMs (AR(1)), t/F contrasts, runs combined by fixed effects as
    nilearn's multi-run ``FirstLevelModel.compute_contrast`` does.
"""
