"""The one exception type for mistakes a user can fix.

The CLI prints a ``UserError`` as a single line on stderr and exits non-zero;
any other exception is a bug in mat-dist and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix, on one line."""
