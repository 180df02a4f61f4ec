"""How fastppo words a caught exception inside its own one-line errors.

torch's and the standard library's messages run over several lines (tracebacks of the C++ side,
advice, tables of keys); a user error names the file or option first and then only the cause:
``describe(err)`` is ``"TypeName: first line of the message"``, or the type name alone when the
message is empty.
"""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first non-blank line of ``err``'s message, stripped ("" when it has none)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return ""


def describe(err: BaseException) -> str:
    """``"TypeName: first line"``, or ``"TypeName"`` when the message is empty."""
    line = first_line(err)
    return f"{type(err).__name__}: {line}" if line else type(err).__name__
