"""The documentation's code blocks, run the way a reader would paste them.

Every fenced block of ``README.md``, ``CONTRIBUTING.md``, ``docs/*.md`` and the READMEs
under ``src/`` is a test, named by its file and line (``test_block[README.md:31]``); the
blocks of one document run in order, in one terminal (:mod:`docs_session`), so a block
may use what the blocks above it set up. Run one document, or one block (with the blocks
above it, which run first as its set-up)::

    .venv/bin/pytest tests/test_docs.py -k django.md
    .venv/bin/pytest tests/test_docs.py -k 'README.md:58'

``test_every_block_is_run_or_marked`` is the quick half: no database, no network; it fails
on a block the docs test cannot run that does not say why, on a bad directive, and on a
Python or shell block (run or not) that does not even parse. The markers are in
CONTRIBUTING.md.
"""

from __future__ import annotations

import ast
import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkout import ROOT, copy_checkout
from docs_blocks import Block, blocks_of
from docs_session import DocFailure, Session, Setting

DOCS = sorted(
    str(path.relative_to(ROOT))
    for pattern in ("*.md", "docs/*.md", "src/**/*.md")
    for path in ROOT.glob(pattern)
)
BLOCKS = blocks_of(ROOT, DOCS)


def test_every_block_is_run_or_marked() -> None:
    problems = [f"{block.where}: {why}" for block in BLOCKS if (why := _problem(block))]
    assert not problems, "\n".join(problems)


def _problem(block: Block) -> str | None:
    if why := block.problem():
        return why
    if block.language in ("python", "py"):
        try:
            flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT  # an await in an API summary is fine
            compile("\n" * (block.line) + block.text, block.doc, "exec", flags=flags)
        except SyntaxError as exc:
            return f"Python that does not parse: {exc}"
    if block.language in ("sh", "bash", "shell"):
        checked = subprocess.run(
            ["bash", "-n"], input=block.text, capture_output=True, text=True, check=False
        )
        if checked.returncode:
            return f"shell that does not parse: {checked.stderr.strip()}"
    return None


class Runner:
    """The sessions of one test run, one per document; one runs at a time."""

    def __init__(self, setting: Setting, scratch: Path) -> None:
        self.setting = setting
        self.scratch = scratch
        self.sessions: dict[str, Session] = {}
        self.current: Session | None = None

    def run(self, block: Block) -> None:
        session = self._session(block.doc)
        for earlier in BLOCKS:
            if earlier.doc != block.doc or earlier.line >= block.line:
                continue
            if earlier.where not in session.done:
                # The set-up the document gives this block (when run alone, with -k).
                with contextlib.suppress(pytest.skip.Exception):
                    self._run(session, earlier)
            if session.done[earlier.where] is not None:
                pytest.skip(f"{earlier.where} failed, and this block comes after it")
        self._run(session, block)
        failed = session.done[block.where]
        if failed is not None:
            raise DocFailure(failed)

    def _run(self, session: Session, block: Block) -> None:
        """Run ``block``; record None (done, or skipped: raised) or why it failed."""
        session.done[block.where] = None
        try:
            if why := _problem(block):
                raise DocFailure(f"{block.where}: {why}")
            session.run(block)
        except DocFailure as exc:
            session.done[block.where] = str(exc)

    def _session(self, doc: str) -> Session:
        if self.current is not None and self.current.doc != doc:
            self.current.stop_background()
        if doc not in self.sessions:
            scratch = self.scratch / doc.replace("/", "-")
            scratch.mkdir(parents=True)
            self.sessions[doc] = Session(self.setting, doc, scratch)
        self.current = self.sessions[doc]
        return self.current

    def close(self) -> None:
        for session in self.sessions.values():
            session.stop_background()


@pytest.fixture(scope="session")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    from sserelay.bus.postgres.embedded import start_embedded

    base = tmp_path_factory.mktemp("docs")
    home = base / "home"
    (home / "run").mkdir(parents=True, mode=0o700)
    pgdata = home / "data" / "sserelay" / "pgdata"  # where `sserelay serve` looks for it
    setting = Setting(
        clone=copy_checkout(base / "sserelay"),
        home=home,
        pghost=str(pgdata),
        dsn=start_embedded(pgdata),
        ports={"8000": str(free_port()), "8001": str(free_port())},
        redis=os.environ.get("SSERELAY_TEST_REDIS"),
    )
    runner = Runner(setting, base / "scratch")
    try:
        yield runner
    finally:
        runner.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.timeout(900)
@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_block(block: Block, docs: Runner) -> None:
    docs.run(block)
