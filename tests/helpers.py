"""Helpers shared by the test files (fixtures live in conftest.py; pytest advises against importing it).

`cli` runs one command in-process and captures what it printed; `assert_one_line_error` checks the
project's error contract: exit status 2 and exactly one line `bmtpt CMD: error: ...`, no traceback.
"""

from __future__ import annotations

from bmtpt.cli import main

# the smallest run options of the command-line tests (tiny backbones, one thread, no bars)
SMALL = ["--prompt-length", "3", "--batch-size", "4", "--device", "cpu", "--no-progress"]


def cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one in-process `bmtpt` command (earlier output is dropped first:
    e.g. what a fixture printed while saving a tiny model)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, command: str, *fragments: str) -> str:
    """Exit status 2 and one line `bmtpt COMMAND: error: ...` holding every fragment; returns that line.

    transformers' own "Loading weights" bar may come first when the error follows loading the backbone.
    """
    assert rc == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("\rLoading", "Loading"))]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"bmtpt {command}: error:") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]
