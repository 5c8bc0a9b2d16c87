"""``python -m bids_group_app`` runs the command-line app."""

from bids_group_app.cli.run import main

raise SystemExit(main())
