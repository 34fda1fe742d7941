"""The error family that wmpc raises for bad input: files, messages, parameters, models.

The CLI turns any WmpcError into one line on stderr and exit code 2, with no traceback.
"""


class WmpcError(Exception):
    """Bad input that the user can fix; the message says what is wrong and how to fix it."""
