"""CLI sub-commands, one module per stage; see :mod:`edgequery.cli`."""
