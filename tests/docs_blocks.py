"""The fenced code blocks of the documentation, and what the docs test does with each.

A block runs by default: ``sh``/``bash`` in bash, ``python`` in the session's ``python3``,
``sql`` in ``psql``. Any other block, and a runnable one that cannot run, says what it is
in HTML comments on the lines just above its opening fence (CONTRIBUTING.md lists them)::

    <!-- not-run: a placeholder host -->
    <!-- background: serving on -->       run it in the background, ready once it prints this
    <!-- output -->                       what the latest background command prints (as is)
    <!-- output: numbers vary -->         the same, any number standing for any number
    <!-- stop-background -->              first stop the background commands (Ctrl-C)
    <!-- needs: redis -->                 run only when the tests have a Redis
    <!-- same-as: src/sserelay/... -->    the block is part of this file (whose tests run it)
    <!-- append-to: mysite/settings.py --> add the block to this file of the session
    <!-- write-to: mysite/asgi.py -->     write the block as this file of the session

An unmarked block the docs test cannot run fails, as does an unknown directive.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

#: Languages the docs test runs, by the name in the fence's info string.
RUNNABLE = {
    "sh": "sh",
    "bash": "sh",
    "shell": "sh",
    "python": "python",
    "py": "python",
    "sql": "sql",
}

#: Directive -> whether it takes a value.
DIRECTIVES = {
    "not-run": True,
    "background": True,
    "output": False,
    "stop-background": False,
    "needs": True,
    "same-as": True,
    "append-to": True,
    "write-to": True,
}
#: Directives that say what a block is instead of running it.
NOT_RUN = {"not-run", "output", "same-as", "append-to", "write-to"}

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
DIRECTIVE = re.compile(r"^\s*<!--\s*(?P<name>[a-z][a-z-]*)\s*(?::\s*(?P<value>.*?))?\s*-->\s*$")


class DocError(Exception):
    """The documentation itself is malformed (a fence not closed, a bad directive)."""


@dataclass
class Block:
    """One fenced block: where it is, its language, its text, its directives."""

    doc: str  # path relative to the repository, e.g. "docs/django.md"
    line: int  # the line of its opening fence, from 1
    info: str  # the info string, e.g. "python"
    text: str  # its content, dedented by the fence's indentation
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def language(self) -> str:
        return self.info.split()[0].lower() if self.info.split() else ""

    @property
    def kind(self) -> str | None:
        """How the docs test runs it (``sh``, ``python``, ``sql``), or None if it does not."""
        if NOT_RUN & self.directives.keys():
            return None
        return RUNNABLE.get(self.language)

    def problem(self) -> str | None:
        """Why the block is not acceptable as it is, or None."""
        reason = self.directives.get("not-run")
        if "not-run" in self.directives and not (reason or "").strip():
            return "<!-- not-run --> needs a reason: <!-- not-run: why it cannot run -->"
        if self.kind is None and not NOT_RUN & self.directives.keys():
            return (
                f"a {self.language or 'plain'} block the docs test cannot run: mark it "
                "<!-- not-run: why -->, <!-- output -->, <!-- same-as: FILE -->, ... "
                "(see CONTRIBUTING.md)"
            )
        if "background" in self.directives and self.kind != "sh":
            return "<!-- background: ... --> is for shell blocks"
        return None


def parse(doc: str, text: str) -> list[Block]:
    """The fenced blocks of one Markdown file, with the directives above each."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = index + 1
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if end == len(lines):
            raise DocError(f"{doc}:{index + 1}: a code fence that is never closed")
        body = "\n".join(
            line[indent:] if line[:indent].isspace() else line for line in lines[index + 1 : end]
        )
        block = Block(doc, index + 1, opening["info"].strip(), textwrap.dedent(body) + "\n")
        block.directives = _directives(doc, lines, index)
        blocks.append(block)
        index = end + 1
    return blocks


def _directives(doc: str, lines: list[str], fence: int) -> dict[str, str]:
    """The directive comments on the lines just above line ``fence`` (blank lines between
    them are allowed; anything else ends the search)."""
    found: dict[str, str] = {}
    above = fence - 1
    while above >= 0 and (not lines[above].strip() or DIRECTIVE.match(lines[above])):
        match = DIRECTIVE.match(lines[above])
        above -= 1
        if not match:
            continue
        name, value = match["name"], match["value"]
        where = f"{doc}:{above + 2}"
        if name not in DIRECTIVES:
            raise DocError(f"{where}: unknown directive <!-- {name} --> (see CONTRIBUTING.md)")
        if DIRECTIVES[name] and value is None and name != "not-run":
            raise DocError(f"{where}: <!-- {name}: ... --> needs a value")
        if not DIRECTIVES[name] and value and name != "output":
            raise DocError(f"{where}: <!-- {name} --> takes no value")
        found[name] = value or ""
    return found


def blocks_of(root: Path, docs: list[str]) -> list[Block]:
    """Every block of ``docs`` (paths relative to ``root``), in order."""
    return [block for doc in docs for block in parse(doc, (root / doc).read_text())]
