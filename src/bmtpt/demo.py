"""The offline demo (SmolLM2-135M on the synth suite). Not written yet: it says so instead of failing."""

from .errors import BmtptError


def run_demo(**_: object) -> None:
    """Not implemented yet (see README, Status)."""
    raise BmtptError("the offline demo is not implemented yet; run `bmtpt source` / `bmtpt target` on synth-* "
                     "tasks instead (see README)")
