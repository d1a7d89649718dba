"""desra.pipeline.text: names, paths and errors shown in artifacts, logs, state messages and the CLI cannot act."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from desra.pipeline.text import inert, visible

FORGED = ("g\n\n# All images OK, nothing failed\n\n[open report](javascript:alert(1)) "
          "<img src=x onerror=alert(1)>\x1b[2J\u202eevil\r\t\u2028\u200b\U000e0001")


def test_control_characters_are_shown_as_escapes_on_one_line():
    assert visible(FORGED) == ("g\\n\\n# All images OK, nothing failed\\n\\n[open report](javascript:alert(1)) "
                               "<img src=x onerror=alert(1)>\\x1b[2J\\u202eevil\\r\\t\\u2028\\u200b\\U000e0001")
    assert visible("caf\u00e9 1×1 drop/img_01.png") == "caf\u00e9 1×1 drop/img_01.png"  # printable: unchanged
    assert visible(None) == "" and visible(3) == "3"


def test_inert_text_opens_no_link_tag_or_heading_and_reads_as_itself():
    shown = inert(FORGED)
    assert "\n" not in shown and "\x1b" not in shown and "\u202e" not in shown
    assert "](javascript:" not in shown and "[open report]\\(javascript:alert(1))" in shown
    assert "<" not in shown and "&lt;img src=x onerror=alert(1)>" in shown
    assert inert("# heading") == "\\# heading" and inert("  * * *") == "  \\* * *" and inert("- x") == "\\- x"
    assert inert("> quote") == "\\> quote" and inert("expected sigma > 0, got -1") == "expected sigma > 0, got -1"
    assert inert("&lt;img&gt; & co") == "&amp;lt;img&amp;gt; & co"  # a name that spells an entity stays literal
    ordinary = "expected images at least 11×11 pixels (the window), got 4×4 (input: drop/img_01.png, 1×1 pixels)"
    assert inert(ordinary) == ordinary  # what users normally see does not change
    assert inert("got ['a', 'b'] (file: x)") == "got ['a', 'b'] (file: x)"


@given(st.text())
def test_any_text_becomes_one_inert_line(text):
    shown = inert(text)
    assert all(c.isprintable() or c == " " for c in shown), shown
    assert "<" not in shown and "](" not in shown
    assert not re.match(r" *[#>*+-]", shown), shown
    assert re.search(r"&(?!lt;|gt;|amp;)#?[0-9A-Za-z]+;", shown) is None  # no character reference of the text's
    if text.isprintable() and not set(text) & set("<&]#>*+-"):
        assert shown == text
