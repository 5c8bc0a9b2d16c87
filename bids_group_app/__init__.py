"""bids_group_app: group-level statistics for BIDS first-level derivatives."""

__version__ = "0.1.0"
