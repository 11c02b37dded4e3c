"""A reader's terminal, for the docs test: one per documentation file, running its blocks in
order the way a reader pastes them.

What the session gives the blocks, and the only things it changes in them (CONTRIBUTING.md
says the same to doc writers):

- a clone: a copy of the checkout's files, shared by the documents of one test run; each
  document starts in its root with a fresh shell (no virtualenv active);
- shell state carried from block to block as in one terminal: the directory (``cd``) and the
  variables (``export``, and plain assignments: blocks run with ``set -a``). Blocks run with
  ``set -eo pipefail``: a failing command fails the block;
- a PostgreSQL of the test run's own, where the docs' defaults find it: the embedded server's
  data directory (``$XDG_DATA_HOME/sserelay/pgdata``) and libpq's variables (``PGHOST``,
  ``PGUSER``), so ``sserelay serve`` without a database, ``createdb`` and ``psql`` use it;
  Python blocks get ``DATABASE_URL`` pointing at it unless a block set one;
- ports 8000 and 8001, where the docs' servers listen, replaced by free ports (in the block
  text and output), since other programs on the machine may hold them; a Redis URL of
  ``redis://127.0.0.1:6379/0`` replaced by ``$SSERELAY_TEST_REDIS``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from docs_blocks import Block

#: Blocks that install packages may take this long (a cold pip cache downloads them).
SLOW = 600.0
FAST = 120.0
#: Seconds an <!-- output --> may take to appear.
OUTPUT_WAIT = 30.0
#: Variables of the test run that would change what the docs' commands do.
CLEARED = re.compile(
    r"^(DATABASE_URL|REDIS_URL|ALLOWED_ORIGINS|LOG_LEVEL|VIRTUAL_ENV|PYTHONPATH"
    r"|SSERELAY_.*|DJANGO_.*|PG.*|CHAT_.*)$"
)
#: Shell variables that are not state a reader carries from one command to the next.
NOT_STATE = {"_", "SHLVL", "PWD", "OLDPWD"}
DOC_REDIS = "redis://127.0.0.1:6379/0"


@dataclass
class Setting:
    """What every session of a test run shares."""

    clone: Path  # the copy of the checkout
    home: Path  # XDG_DATA_HOME and XDG_RUNTIME_DIR live here
    pghost: str  # the private PostgreSQL's socket directory
    dsn: str  # its ``postgres`` database
    ports: dict[str, str]  # "8001" -> the free port that stands for it
    redis: str | None  # SSERELAY_TEST_REDIS, if set


@dataclass
class Background:
    block: Block
    proc: subprocess.Popen[bytes]
    log: Path  # stdout; stderr is next to it, with the suffix .err

    def stdout(self) -> str:
        return _read(self.log)

    def output(self) -> str:
        """Both streams, for ready texts and failure messages."""
        return f"{self.stdout()}{_read(self.log.with_suffix('.err'))}"


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


class DocFailure(AssertionError):
    """A block did not do what its document says."""


class Session:
    """The terminal of one document."""

    def __init__(self, setting: Setting, doc: str, scratch: Path) -> None:
        self.setting = setting
        self.doc = doc
        self.scratch = scratch  # this session's own files (block scripts, logs)
        self.cwd = setting.clone
        self.env = self._fresh_env()
        self.background: list[Background] = []
        self.groups: list[int] = []  # process groups of foreground blocks (``cmd &`` in them)
        self.done: dict[str, str | None] = {}  # block -> None if it passed, else why not

    def _fresh_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not CLEARED.match(k)}
        env.update(
            XDG_DATA_HOME=str(self.setting.home / "data"),
            XDG_RUNTIME_DIR=str(self.setting.home / "run"),
            PGHOST=self.setting.pghost,
            PGUSER="postgres",
            PYTHONUNBUFFERED="1",
            # pip refuses to install outside a virtualenv: a document that forgets to make
            # (or activate) one fails instead of installing into the machine's Python.
            PIP_REQUIRE_VIRTUALENV="1",
            # `sserelay serve` listens on 8001 unless told otherwise: on the port standing
            # for 8001 here.
            SSERELAY_PORT=self.setting.ports["8001"],
        )
        # A fresh shell: no virtualenv of the test run's on PATH.
        ours = {
            str(Path(sys.prefix) / "bin"),
            str(Path(os.environ.get("VIRTUAL_ENV", sys.prefix)) / "bin"),
        }
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p not in ours)
        return env

    # -- the text a block runs ----------------------------------------------------------

    def substitute(self, text: str) -> str:
        """The block's text with the ports (and Redis URL) of this test run."""
        for doc_port, port in self.setting.ports.items():
            text = re.sub(rf"(?<![\d.]){doc_port}(?!\d)", port, text)
        if self.setting.redis:
            text = text.replace(DOC_REDIS, self.setting.redis)
        return text

    # -- running ------------------------------------------------------------------------

    def run(self, block: Block) -> None:
        if "needs" in block.directives:
            self._check_needs(block)
        if "stop-background" in block.directives:
            self.stop_background()
        if "same-as" in block.directives:
            return self._same_as(block)
        if "append-to" in block.directives or "write-to" in block.directives:
            return self._write(block)
        if "output" in block.directives:
            return self._output(block)
        if block.kind is None:
            return None  # not run (its reason is in the doc)
        if "background" in block.directives:
            return self._start_background(block)
        return self._foreground(block)

    def _check_needs(self, block: Block) -> None:
        need = block.directives["needs"]
        if need != "redis":
            raise DocFailure(f"{block.where}: unknown need {need!r} (only: redis)")
        if not self.setting.redis:
            pytest.skip(f"{block.where} needs a Redis: SSERELAY_TEST_REDIS is not set")

    def _script(self, block: Block, suffix: str) -> Path:
        path = self.scratch / f"{Path(block.doc).name}-{block.line}{suffix}"
        text = self.substitute(block.text)
        if block.kind == "python":  # tracebacks then give the document's line numbers
            text = "\n" * block.line + text
        path.write_text(text)
        return path

    def _command(self, block: Block) -> list[str]:
        if block.kind == "sh":
            script = self._script(block, ".sh")
            state = self.scratch / "state"
            prelude = (
                f"trap 'pwd > {state}.cwd; env -0 > {state}.env' EXIT\nset -a -e -o pipefail\n"
            )
            return ["bash", "--noprofile", "--norc", "-c", prelude + f". {script}\n"]
        if block.kind == "python":
            return ["python3", str(self._script(block, ".py"))]
        assert block.kind == "sql"
        target = self.env.get("DATABASE_URL", self.setting.dsn)
        return [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            target,
            "-f",
            str(self._script(block, ".sql")),
        ]

    def _environ(self, block: Block) -> dict[str, str]:
        env = dict(self.env)
        if block.kind == "python":
            env.setdefault("DATABASE_URL", self.setting.dsn)
        return env

    def _foreground(self, block: Block) -> None:
        timeout = SLOW if "pip install" in block.text else FAST
        log = self.scratch / f"{Path(block.doc).name}-{block.line}.log"
        # Output to a file, not a pipe: a command the block leaves running (``... &``)
        # would hold a pipe open. Its own process group: such commands are stopped with
        # the session's background commands.
        with log.open("wb") as out:
            proc = subprocess.Popen(
                self._command(block),
                cwd=self.cwd,
                env=self._environ(block),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.groups.append(proc.pid)
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise self._failure(block, f"still running after {timeout:.0f}s", _read(log)) from None
        if status != 0:
            raise self._failure(block, f"exit status {status}", _read(log))
        if block.kind == "sh":
            self._keep_state()

    def _keep_state(self) -> None:
        state = self.scratch / "state"
        self.cwd = Path(state.with_suffix(".cwd").read_text().strip())
        pairs = state.with_suffix(".env").read_bytes().decode().split("\0")
        env = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        self.env = {k: v for k, v in env.items() if k not in NOT_STATE}

    def _start_background(self, block: Block) -> None:
        log = self.scratch / f"{Path(block.doc).name}-{block.line}.out"
        # stdout apart: what <!-- output --> shows is what a terminal shows of it (a
        # program writing to a file, like curl, adds progress reports on stderr).
        with log.open("wb") as out, log.with_suffix(".err").open("wb") as err:
            proc = subprocess.Popen(
                ["bash", "--noprofile", "--norc", "-e", str(self._script(block, ".sh"))],
                cwd=self.cwd,
                env=self._environ(block),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        started = Background(block, proc, log)
        self.background.append(started)
        ready = self.substitute(block.directives["background"])
        timeout = SLOW if "pip install" in block.text else FAST
        deadline = time.monotonic() + timeout
        while ready not in started.output():
            if proc.poll() is not None:
                raise self._failure(
                    block, f"exited ({proc.returncode}) before {ready!r}", started.output()
                )
            if time.monotonic() > deadline:
                raise self._failure(block, f"no {ready!r} within {timeout:.0f}s", started.output())
            time.sleep(0.1)

    def _output(self, block: Block) -> None:
        if not self.background:
            raise DocFailure(f"{block.where}: <!-- output --> with no background command before it")
        latest = self.background[-1]
        expected = self.substitute(block.text).rstrip("\n")
        lines = [re.escape(line.rstrip()) for line in expected.split("\n")]
        if block.directives["output"] == "numbers vary":
            lines = [re.sub(r"\d+", r"\\d+", line) for line in lines]
        elif block.directives["output"]:
            raise DocFailure(f"{block.where}: <!-- output: ... --> knows only 'numbers vary'")
        pattern = re.compile(r"[ \t]*\r?\n".join(lines))
        deadline = time.monotonic() + OUTPUT_WAIT
        while not pattern.search(latest.stdout()):
            if time.monotonic() > deadline:
                raise self._failure(
                    block,
                    f"not in the output of {latest.block.where} within {OUTPUT_WAIT:.0f}s",
                    latest.output(),
                )
            time.sleep(0.1)

    def _same_as(self, block: Block) -> None:
        """The block's lines are lines of the file, in a row; indentation and blank lines
        aside (the file may hold them in a function, formatted by ruff)."""
        name = block.directives["same-as"]
        path = self.setting.clone / name
        if not path.is_file():
            raise DocFailure(f"{block.where}: <!-- same-as --> names {name}, which does not exist")
        wanted = _lines(block.text)
        have = _lines(path.read_text())
        if not any(have[i : i + len(wanted)] == wanted for i in range(len(have))):
            raise DocFailure(
                f"{block.where}: the block is not (any longer) in {name}: update one of them\n"
                f"--- the block ---\n{block.text}"
            )

    def _write(self, block: Block) -> None:
        name = block.directives.get("append-to") or block.directives["write-to"]
        path = self.cwd / name
        if not path.parent.is_dir():
            raise DocFailure(f"{block.where}: no directory for {name} in {self.cwd}")
        mode = "a" if "append-to" in block.directives else "w"
        with path.open(mode) as file:
            file.write(("\n" if mode == "a" else "") + self.substitute(block.text))

    def _failure(self, block: Block, what: str, output: str) -> DocFailure:
        return DocFailure(
            f"{block.where} ({block.language} block): {what}\n"
            f"--- the block, as run (in {self.cwd}) ---\n{self.substitute(block.text)}"
            f"--- its output ---\n{output[-8000:]}"
        )

    # -- stopping -----------------------------------------------------------------------

    def stop_background(self) -> None:
        """Ctrl-C to every background command, then SIGTERM, then SIGKILL."""
        for started in reversed(self.background):
            for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(started.proc.pid, sig)
                try:
                    started.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.proc.pid, signal.SIGKILL)  # what the shell left behind
        self.background.clear()
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        self.groups.clear()
