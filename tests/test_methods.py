"""The method table: every reader (experiment runner, target stage, demo) agrees with it."""

from __future__ import annotations

from bmtpt.config import TargetConfig
from bmtpt.demo import METHODS as DEMO_METHODS
from bmtpt.demo import TW_TASK
from bmtpt.expconfig import BASES, FIXED_TARGET, STAGE_KIND
from bmtpt.methods import METHODS, TARGET_KINDS


def test_the_runner_reads_the_table():
    assert BASES == tuple(METHODS) == ("pt", "avg", "spot", "mpt", "bmtpt", "attempt")
    assert STAGE_KIND == {"pt": None, "avg": "independent", "spot": "independent", "mpt": "mpt", "bmtpt": "svgd",
                          "attempt": "independent"}
    assert FIXED_TARGET["mpt"] == {"method": "avg", "init": "mean", "rank_one": True}
    # the demo's methods are built-in ones, and its one variant is named and based on one
    assert set(DEMO_METHODS) - {TW_TASK["name"]} <= set(METHODS) and TW_TASK["base"] in METHODS


def test_every_method_fixes_a_valid_target_run():
    for m in METHODS.values():
        assert m.target["method"] in TARGET_KINDS
        cfg = TargetConfig(out="x", task="t", posterior="p" if m.kind.needs_posterior else None, **m.target)
        cfg.validate()  # what the method fixes is a valid target run
        assert (m.source is not None) == m.kind.needs_posterior
    assert [k for k, v in TARGET_KINDS.items() if v.prior] == ["bmtpt"]
