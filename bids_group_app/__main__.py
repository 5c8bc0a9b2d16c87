"""``python -m bids_group_app`` runs the command-line app."""

from .cli.run import main

raise SystemExit(main())
