"""The one exception type users see.

Every failure a user can cause (missing data, a wrong file, a bad flag value) raises
:class:`EdgeQueryError` with a message that names the problem *and* the fix.  The CLI
prints it on one line and exits non-zero; tracebacks only appear with ``--debug``.
"""


class EdgeQueryError(Exception):
    """A user-facing error: ``problem`` plus ``fix`` (how to get past it)."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)
