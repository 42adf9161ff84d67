"""The method table: what each method of a comparison means, in one place.

A *method* (pt, avg, spot, mpt, bmtpt, attempt) is a source stage (none, M independent per-task prompts, MPT's
shared prompt, or SVGD particles) followed by a target run of one of four kinds (`bmtpt target --method`):

    pt       no posterior; the prompt starts from a vocabulary draw; no prior
    avg      starts from a source prompt (the mean, or one chosen prompt); no prior
    bmtpt    starts from the particles' mean; the source posterior is its prior
    attempt  an input-dependent attention mix of the frozen source prompts plus a trained target prompt

The experiment runner, the target stage and the demo read this table, so an option a method does not use
(a prior weight for avg, say) is refused rather than accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TargetKind:
    """A kind of target run (`--method`): whether it reads a posterior and whether a prior applies."""

    name: str
    needs_posterior: bool
    prior: bool
    default_init: str  # what --init mean becomes (pt has no particles to average)


@dataclass(frozen=True)
class Method:
    """A method of a comparison: its source stage kind and the target-run options it fixes."""

    name: str
    source: str | None  # the source stage's kind: svgd, independent, mpt, or None
    target: dict = field(default_factory=dict)  # target options the method fixes (its --method among them)
    description: str = ""

    @property
    def kind(self) -> TargetKind:
        """The kind of its target runs."""
        return TARGET_KINDS[self.target["method"]]


TARGET_KINDS = {k.name: k for k in (TargetKind("pt", False, False, "vocab"), TargetKind("avg", True, False, "mean"),
                                    TargetKind("bmtpt", True, True, "mean"),
                                    TargetKind("attempt", True, False, "mean"))}

METHODS = {m.name: m for m in (
    Method("pt", None, {"method": "pt"}, "prompt tuning from a vocabulary draw, no source knowledge"),
    Method("avg", "independent", {"method": "avg", "init": "mean"}, "the mean of one prompt per source task"),
    # spot's prompt is chosen per cell by its probe (particle:K); K = 0 here is only a placeholder
    Method("spot", "independent", {"method": "avg", "init": "particle:0"},
           "the source prompt whose task embedding is closest to a probe of the target"),
    Method("mpt", "mpt", {"method": "avg", "init": "mean", "rank_one": True},
           "MPT's shared prompt with a fresh rank-one factor"),
    Method("bmtpt", "svgd", {"method": "bmtpt"}, "SVGD particles: their mean as the start, their density as prior"),
    Method("attempt", "independent", {"method": "attempt"},
           "ATTEMPT: an input-dependent attention mix of the frozen source prompts plus a target prompt"),
)}
