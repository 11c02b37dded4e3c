"""The docs test's own machinery (tests/docs_blocks.py, tests/docs_session.py), on documents
made up here: that it finds blocks and markers, runs what it should, carries a terminal's
state, and fails a block that does not do what it says, naming the file and line."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import docs_session
from docs_blocks import DocError, parse
from docs_session import DocFailure, Session, Setting


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def test_blocks_and_their_markers() -> None:
    blocks = parse(
        "x.md",
        doc("""
        Text.

        <!-- not-run: a placeholder host -->

        ```sh
        curl https://example.com
        ```

        - a list item:

          <!-- output: numbers vary -->
          ````
          id: 1
          ````

        ```html
        <p>
        ```
        """),
    )
    assert [(b.line, b.language, b.directives) for b in blocks] == [
        (5, "sh", {"not-run": "a placeholder host"}),
        (12, "", {"output": "numbers vary"}),
        (16, "html", {}),
    ]
    assert blocks[1].text == "id: 1\n"  # the list item's indentation is not content
    assert [b.kind for b in blocks] == [None, None, None]
    assert [b.problem() is None for b in blocks] == [True, True, False]
    assert "cannot run" in (blocks[2].problem() or "")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<!-- not-runn: typo -->\n```sh\ntrue\n```\n", r"x.md:1: unknown directive"),
        ("<!-- background -->\n```sh\ntrue\n```\n", r"x.md:1: .* needs a value"),
        ("<!-- stop-background: now -->\n```sh\ntrue\n```\n", r"takes no value"),
        ("```sh\ntrue\n", r"x.md:1: a code fence that is never closed"),
    ],
)
def test_malformed_documents_are_errors(text: str, error: str) -> None:
    with pytest.raises(DocError, match=error):
        parse("x.md", text)


def test_a_not_run_block_needs_a_reason() -> None:
    (block,) = parse("x.md", "<!-- not-run -->\n```sh\ntrue\n```\n")
    assert "needs a reason" in (block.problem() or "")


@pytest.fixture
def session(tmp_path: Path) -> Session:
    clone = tmp_path / "clone"
    (clone / "sub").mkdir(parents=True)
    (clone / "example.py").write_text("def f():\n    x = 1\n\n    return x\n")
    setting = Setting(
        clone=clone,
        home=tmp_path / "home",
        pghost=str(tmp_path / "no-postgres"),
        dsn="postgresql:///nothing",
        ports={"8000": "18000", "8001": "18001"},
        redis=None,
    )
    (tmp_path / "scratch").mkdir()
    made = Session(setting, "x.md", tmp_path / "scratch")
    yield made
    made.stop_background()


def run_all(session: Session, text: str) -> None:
    for block in parse("x.md", doc(text)):
        session.run(block)


def test_a_terminal_state_goes_from_block_to_block(session: Session) -> None:
    run_all(
        session,
        """
        ```sh
        cd sub
        export GREETING=hello
        PLAIN=also
        ```

        ```sh
        test "$(basename "$PWD")" = sub
        test "$GREETING $PLAIN" = "hello also"
        ```
        """,
    )
    assert session.cwd.name == "sub"


def test_a_failing_block_names_its_line_and_output(session: Session) -> None:
    with pytest.raises(DocFailure, match=r"(?s)x.md:3 \(sh block\): exit status 3.*oops"):
        run_all(session, "Text.\n\n```sh\necho oops\nfalse || exit 3\necho never\n```\n")


def test_a_failing_pipeline_fails(session: Session) -> None:
    with pytest.raises(DocFailure, match="exit status"):
        run_all(session, "```sh\nfalse | cat\n```\n")


def test_python_tracebacks_give_the_document_lines(session: Session) -> None:
    with pytest.raises(DocFailure) as failure:
        run_all(session, "Intro.\n\n```python\nx = 1\nraise SystemExit(f'{y}')\n```\n")
    assert re.search(r"line 5, in <module>", str(failure.value)), failure.value


def test_ports_of_the_docs_are_replaced(session: Session) -> None:
    block = "test '127.0.0.1:8001/ 8000 18001 80010' = '127.0.0.1:18001/ 18000 18001 80010'"
    run_all(session, f"```sh\n{block}\n```\n")
    assert session.env["SSERELAY_PORT"] == "18001"


def test_background_commands_and_their_output(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docs_session, "OUTPUT_WAIT", 2.0)
    text = """
        <!-- background: started -->
        ```sh
        echo started; echo 'retry: 2417'; echo; echo 'data: hi'; sleep 600
        ```

        <!-- output: numbers vary -->
        ```
        retry: 1234

        data: hi
        ```
        """
    run_all(session, text)
    (started,) = session.background
    session.stop_background()
    assert started.proc.poll() is not None, "stopped"

    wrong = text.replace("data: hi\n        ```\n", "data: bye\n        ```\n")
    with pytest.raises(DocFailure, match="not in the output"):
        run_all(session, wrong)


def test_a_background_command_that_exits_fails(session: Session) -> None:
    with pytest.raises(DocFailure, match=r"exited \(1\) before 'serving'"):
        run_all(session, "<!-- background: serving -->\n```sh\necho no; exit 1\n```\n")


def test_same_as_follows_the_file(session: Session) -> None:
    run_all(session, "<!-- same-as: example.py -->\n```python\nx = 1\nreturn x\n```\n")
    with pytest.raises(DocFailure, match=r"not \(any longer\) in example.py"):
        run_all(session, "<!-- same-as: example.py -->\n```python\nx = 2\n```\n")


def test_append_to_and_write_to(session: Session) -> None:
    run_all(
        session,
        """
        <!-- write-to: sub/settings.py -->
        ```python
        A = 1
        ```

        <!-- append-to: sub/settings.py -->
        ```python
        B = A + 1
        ```

        ```sh
        python3 -c 'import sys; sys.path.insert(0, "sub"); import settings; assert settings.B == 2'
        ```
        """,
    )


def test_pip_refuses_to_install_outside_a_virtualenv(session: Session) -> None:
    with pytest.raises(DocFailure, match=r"Could not find an activated virtualenv"):
        run_all(session, "```sh\npython3 -m pip install --no-index nothing-at-all\n```\n")
