"""The README's promises about itself: CI runs its test command word for word, and its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command_word_for_word():
    readme = (REPO / "README.md").read_text()
    commands = [b.strip() for b in _bash_blocks(readme) if "pytest" in b and "pip install" in b and "'.[dev]'" in b]
    assert len(commands) == 1, f"expected one install-and-test command in the README, got {commands}"
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert commands[0] in ci_lines, f".ci/run does not run the README's test command: {commands[0]}"


def test_readme_links_to_files_that_exist():
    readme = (REPO / "README.md").read_text()
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme) if not t.startswith(("http", "#"))}
    assert targets, "the README links to no document"
    missing = sorted(t for t in targets if not (REPO / t).exists())
    assert not missing, f"README links to missing files: {missing}"


def test_readme_is_short_enough_to_read_in_five_minutes():
    # ~1000 words is five minutes of reading; measurement logs and design notes belong under docs/.
    words = len((REPO / "README.md").read_text().split())
    assert words <= 1300, f"README has {words} words; move detail to docs/"
