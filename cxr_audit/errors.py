"""The one exception type for problems a user can cause and fix.

Anything raised as :class:`UserInputError` is printed by the CLI as a short paragraph without a traceback
and exits with code 2. Its message should name the file, the line/row/key, and the fix. Programming errors
keep raising ordinary exceptions so they stay visible.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2


class UserInputError(Exception):
    """Bad input (spec, CSV, image, model file, options): the message says where and how to fix it."""
