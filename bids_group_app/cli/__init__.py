"""Command-line interface: :mod:`.parser` parses, :mod:`.run` runs."""
