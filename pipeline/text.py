"""Text from outside (file names, paths, error messages) made safe to show: :func:`inert`.

A drop's file names are chosen by whoever can write the drop, and error messages quote them, so such
text must not be able to act where it is shown: start a new line (forging a log line or a heading), open
a link (``[x](javascript:…)``), or become HTML (``<img onerror=…>``). Every place where such text leaves
the pipeline (markdown and table artifacts, which the Prefect UI renders as markdown; log messages; a
run's state message; command-line output) passes it through :func:`inert`. The reports' Parquet rows
keep the raw values: they are data. The review page, which escapes HTML itself, uses :func:`visible`.
"""

import re

__all__ = ["inert", "visible"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ENTITY = re.compile(r"&(?=#?[0-9A-Za-z]+;)")  # "&" that would start a character reference ("&lt;")
_BLOCK = re.compile(r"^( *)([#>+\-*])")  # at the start: a heading, a quote, a list item or a rule ("* * *")


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: object) -> str:
    """``text`` on one line, every character that is not printable shown as an escape: newline ``\\n``,
    carriage return ``\\r``, tab ``\\t``, others as ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN`` (e.g. ESC
    ``\\x1b``, the right-to-left override ``\\u202e``, the line separator ``\\u2028``, a zero-width space
    ``\\u200b``). Printable means what :meth:`str.isprintable` says, plus the ordinary space. ``None``
    becomes ``""``."""
    text = "" if text is None else str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _escape(c) for c in text)


def inert(text: object) -> str:
    """:func:`visible` ``text`` that is also inert as markdown and HTML, and still reads as itself.

    ``<`` becomes ``&lt;`` (no tag, no autolink: both need it), an ``&`` that would start a character
    reference becomes ``&amp;``, a ``(`` right after ``]`` is escaped (``]\\(``: no link or image), and a
    heading, quote, list or rule marker at the start is escaped (``\\#``). With no line break left, nothing
    else can start a line; the rest (``a > 0``, ``['a', 'b']``, ``x & y``) is left as it reads. Use it for
    every file name, path or error message that goes into an artifact, a log message, a state message or
    command-line output.
    """
    text = _ENTITY.sub("&amp;", visible(text))  # first: the "&lt;" written next stays one
    text = text.replace("<", "&lt;").replace("](", "]\\(")
    return _BLOCK.sub(r"\1\\\2", text, count=1)
