"""Confidence intervals for a benchmark grid: a two-level bootstrap over seeds and test examples.

(The same bootstrap runs on dev scores, from `dev_correct`, to choose settings on dev with intervals.)

A cell's test score is the mean of per-example results (1 = correct, as kept in `test_correct`), and
every method and seed of a task is scored on the same test examples (the sample does not depend on the
seed). One bootstrap replicate redraws, for each task, the seeds (with replacement) and the test
examples (with replacement, the *same* draw for every method and seed), then recomputes each method's
mean over the drawn seeds and examples, their average over tasks, and the differences between methods.
Because both methods see the same drawn examples, a paired difference keeps the pairing: its interval
is much narrower than the two methods' own intervals suggest. Percentile intervals, 95 % by default.

Cells without per-example results (tasks scored by F1, correlation...) fall back to a seeds-only
bootstrap of their test scores. Written with numpy rather than scipy.stats.bootstrap because the two
levels (seeds, examples shared across methods) are not a scipy resampling scheme.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Cells = Mapping[str, Mapping[int, np.ndarray]]  # task -> seed -> per-example results (0/1) or a 1-element score


@dataclass(frozen=True)
class Interval:
    """A point estimate (the plain mean over seeds and examples) and its bootstrap interval."""

    mean: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.mean:.1f} [{self.lo:.1f}, {self.hi:.1f}]"

    def signed(self) -> str:
        """'+1.2 [+0.3, +2.1]': a difference, with signs."""
        return f"{self.mean:+.1f} [{self.lo:+.1f}, {self.hi:+.1f}]"

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero."""
        return self.lo > 0 or self.hi < 0


def cells_of(records: Sequence[dict], method: str, shots: int | None, split: str = "test",
             per_example: bool = True) -> dict[str, dict[int, np.ndarray]]:
    """task -> seed -> per-example results on `split` (test, or dev: the dev-selected step's) x100, so means
    are percentages, of one method and setting; a record without `{split}_correct` (or every record, when
    not `per_example`) contributes its score as a single value."""
    out: dict[str, dict[int, np.ndarray]] = {}
    for r in records:
        if r["method"] != method or r["shots"] != shots:
            continue
        if per_example and r.get(f"{split}_correct"):
            x = np.frombuffer(r[f"{split}_correct"].encode(), dtype=np.uint8).astype(np.float64) - ord("0")
            out.setdefault(r["task"], {})[r["seed"]] = 100.0 * x
        else:
            out.setdefault(r["task"], {})[r["seed"]] = np.array([float(r[f"{split}_score"])])
    return out


def bootstrap(methods: Mapping[str, Cells], tasks: Sequence[str], n_boot: int = 2000, seed: int = 0
              ) -> dict[str, np.ndarray]:
    """Bootstrap replicates, shape (n_boot, len(tasks) + 1): each method's score per task and their average.

    Every method must have the same seeds and example counts on a task (as a finished grid has); the
    seeds and examples drawn for a task are shared by all methods, so differences of the returned arrays
    are paired differences.
    """
    rng = np.random.default_rng(seed)
    names = list(methods)
    reps = {m: np.empty((n_boot, len(tasks) + 1)) for m in names}
    for j, task in enumerate(tasks):
        seeds = sorted(methods[names[0]].get(task, {}))
        if not seeds:
            raise ValueError(f"no results for task {task}")
        arrays = {}
        for m in names:
            got = methods[m].get(task, {})
            if sorted(got) != seeds:
                raise ValueError(f"method {m} has seeds {sorted(got)} on {task}, {names[0]} has {seeds}")
            arrays[m] = np.stack([got[s] for s in seeds])  # (S, n)
        n = {a.shape[1] for a in arrays.values()}
        if len(n) != 1:
            raise ValueError(f"methods were scored on different numbers of {task} examples: {sorted(n)}")
        n_ex, n_seeds = n.pop(), len(seeds)
        # example weights: multinomial counts are a resample with replacement (n_ex == 1: no resampling)
        w = rng.multinomial(n_ex, np.full(n_ex, 1.0 / n_ex), size=n_boot) / n_ex if n_ex > 1 else np.ones((n_boot, 1))
        pick = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # seeds drawn with replacement
        for m in names:
            per_seed = arrays[m] @ w.T  # (S, n_boot): each seed's mean over the drawn examples
            reps[m][:, j] = per_seed[pick, np.arange(n_boot)[:, None]].mean(1)
    for m in names:
        reps[m][:, -1] = reps[m][:, :-1].mean(1)
    return reps


def point(cells: Cells, tasks: Sequence[str]) -> np.ndarray:
    """The plain estimates matching `bootstrap`'s columns: per-task mean over seeds, then their average."""
    per = np.array([np.mean([c.mean() for c in cells[t].values()]) for t in tasks])
    return np.append(per, per.mean())


def intervals(est: np.ndarray, reps: np.ndarray, level: float = 0.95) -> list[Interval]:
    """One Interval per column: the estimate and the replicates' percentile interval."""
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(reps, [a, 100 - a], axis=0)
    return [Interval(float(e), float(x), float(y)) for e, x, y in zip(est, lo, hi)]


def variance_parts(a: Cells, b: Cells, tasks: Sequence[str]) -> tuple[float, float, int]:
    """(seed part, test-set part, seeds) of the variance of the average paired difference a - b.

    For each task, d[s, i] = a - b on seed s and test example i. The seed part is the variance over seeds
    of the per-seed mean difference (divided by the number of seeds S it is averaged over, it shrinks
    with more seeds); the test-set part is the variance over examples of the per-example mean difference
    over seeds, divided by the number of examples (the test set is the same for every seed, so more seeds
    do not shrink it). Both are averaged over tasks as the average score is (divided by T squared).
    Sample variances (ddof 1); a task with one seed has no seed part (nan)."""
    seed_part = test_part = 0.0
    n_seeds = 0
    for t in tasks:
        d = np.stack([a[t][s] - b[t][s] for s in sorted(a[t])])  # (S, n)
        n_seeds = d.shape[0]
        seed_part += d.mean(1).var(ddof=1) if n_seeds > 1 else float("nan")
        test_part += d.mean(0).var(ddof=1) / d.shape[1] if d.shape[1] > 1 else 0.0
    t2 = len(tasks) ** 2
    return seed_part / t2, test_part / t2, n_seeds


def seeds_for(seed_part: float, test_part: float, half_width: float, z: float = 1.96) -> int | None:
    """Seeds a normal-approximation interval z * sqrt(seed_part / S + test_part) needs to be at most
    +-`half_width`; None when the test sets alone make it wider (more test examples are needed, not seeds)."""
    room = (half_width / z) ** 2 - test_part
    return None if room <= 0 or not np.isfinite(seed_part) else max(1, int(np.ceil(seed_part / room)))


def power_lines(cells: Mapping[str, Cells], pairs: Sequence[tuple[str, str, str]], tasks: Sequence[str],
                target: float = 1.5) -> list[str]:
    """Markdown: for each paired difference on the average, its normal-approximation half-width now, the
    share of its variance that more seeds would shrink, and the seeds a +-`target` interval needs."""
    lines = [f"Power: the average difference's 95 % half-width by the normal approximation (two variance parts: "
             f"between seeds, which more seeds shrink, and the fixed test sets'), and the seeds a ±{target} "
             "interval would need with these test sets:", "",
             "| difference | half-width now | seeds now | share from seeds | seeds for ±" + f"{target} |",
             "|---|---|---|---|---|"]
    for label, a, b in pairs:
        seed_part, test_part, n = variance_parts(cells[a], cells[b], tasks)
        now = 1.96 * np.sqrt(seed_part / n + test_part)
        need = seeds_for(seed_part, test_part, target)
        share = (seed_part / n) / (now / 1.96) ** 2 if now > 0 else float("nan")
        lines.append(f"| {label} | ±{now:.1f} | {n} | {100 * share:.0f} % | "
                     f"{need if need is not None else 'more test examples needed'} |")
    return lines


def finished_seeds(records: Sequence[dict], methods: Sequence[str], tasks: Sequence[str], shots: int | None
                   ) -> tuple[dict[str, set[int]], list[int]]:
    """({method: the seeds on which it finished every task}, every seed of the setting's records)."""
    done = {(r["method"], r["task"], r["seed"]) for r in records if r["shots"] == shots}
    seeds = sorted({r["seed"] for r in records if r["shots"] == shots})
    return {m: {s for s in seeds if all((m, t, s) in done for t in tasks)} for m in methods}, seeds


def complete(records: Sequence[dict], methods: Sequence[str], tasks: Sequence[str], shots: int | None
             ) -> tuple[list[str], list[int]]:
    """(methods, seeds) a fair comparison may use: the methods that finished every task for some seed, and
    the seeds on which all of those finished every task (a partial grid compares what it has)."""
    whole, seeds = finished_seeds(records, methods, tasks, shots)
    kept = [m for m in methods if whole[m]]
    return kept, [s for s in seeds if kept and all(s in whole[m] for m in kept)]


def split_by_seeds(records: Sequence[dict], methods: Sequence[str], tasks: Sequence[str], shots: int | None
                   ) -> tuple[list[str], list[str]]:
    """(methods that finished every task on the most seeds any method did, methods on fewer seeds): a method
    run on seed 0 only must not shrink the main comparison to seed 0."""
    count = {m: len(s) for m, s in finished_seeds(records, methods, tasks, shots)[0].items()}
    most = max(count.values(), default=0)
    return [m for m in methods if 0 < count[m] == most], [m for m in methods if 0 < count[m] < most]


def comparison_lines(records: Sequence[dict], methods: Sequence[str], tasks: Sequence[str], shots: int | None,
                     reference: str = "bmtpt", baselines: Sequence[str] = ("pt", "avg", "spot", "mpt"),
                     ablations: Sequence[str] = (), n_boot: int = 2000, split: str = "test",
                     challengers: Sequence[str] = ()) -> list[str]:
    """Markdown: each method's mean [95 % interval] per task and on the average; then paired differences:
    `reference` - pt, - avg and - the best baseline (the baseline with the highest average), each of
    `ablations` - `reference`, and each of `challengers` (e.g. a dev-chosen variant) - the same baselines,
    per task and on the average. Only methods that finished every task for some
    seed, and only the seeds on which all of those did, are used; [] when there are none. `split` "dev"
    compares the dev-selected steps' dev scores (what settings are chosen on) over seeds and dev examples."""
    methods, seeds = complete(records, methods, tasks, shots)
    if not seeds or not tasks:
        return []
    kept = [r for r in records if r["seed"] in seeds]
    # per-example results only when every cell kept them (cells finished before dev results were kept have
    # none: the tasks then fall back to a seeds-only bootstrap of the scores rather than mixing the two)
    whole = all(r.get(f"{split}_correct") for r in kept if r["method"] in methods and r["shots"] == shots)
    cells = {m: cells_of(kept, m, shots, split, per_example=whole) for m in methods}
    reps = bootstrap(cells, tasks, n_boot)
    est = {m: point(cells[m], tasks) for m in methods}
    head = ["method", *tasks, "average"]
    over = f"seeds and {split} examples" if whole else \
        f"seeds only: some cells kept no per-example {split} results"
    lines = [f"Mean {split} score [95 % interval] over seeds {', '.join(map(str, seeds))} ({n_boot} bootstrap "
             f"replicates over {over}):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        lines.append("| " + " | ".join([m, *(str(i) for i in intervals(est[m], reps[m]))]) + " |")
    if reference not in methods:
        return lines
    present = [b for b in baselines if b in methods]
    best = max(present, key=lambda b: est[b][-1]) if present else None

    def against_baselines(a: str) -> list[tuple[str, str, str]]:
        rows = [(f"{a} − {b}" + (" (best baseline)" if b == best else ""), a, b) for b in ("pt", "avg")
                if b in present]  # the best baseline's row is marked, not repeated
        return rows + ([(f"{a} − best baseline ({best})", a, best)] if best not in (None, "pt", "avg") else [])

    pairs = against_baselines(reference)
    pairs += [(f"{a} − {reference}", a, reference) for a in ablations if a in methods]
    pairs += [p for c in challengers if c in methods and c != reference for p in against_baselines(c)]
    if not pairs:
        return lines
    # a few seeds' scores alone make a coarse interval (three seeds: ten distinct means), not a test: no bold
    bold = "**bold**: the interval excludes 0" if whole else "seeds only, so none is marked as excluding 0"
    lines += ["", f"Paired differences [95 % interval]; {bold}:", "",
              "| difference | " + " | ".join([*tasks, "average"]) + " |", "|" + "---|" * (len(tasks) + 2)]
    for label, a, b in pairs:
        ivs = intervals(est[a] - est[b], reps[a] - reps[b])
        lines.append(f"| {label} | " + " | ".join(f"**{i.signed()}**" if i.excludes_zero and whole else i.signed()
                                                  for i in ivs) + " |")
    if split == "test" and len(seeds) > 1 and whole:
        lines += ["", *power_lines(cells, pairs, tasks)]
    return lines


def selection_lines(records: Sequence[dict], methods: Sequence[str], shots: int | None) -> list[str]:
    """Markdown: per method, how many cells picked the initial prompt on dev (training never beat it: the
    comparison then measures initialisations), and the dev / test example counts the cells were scored on."""
    lines = ["| method | cells | dev-selected step 0 | dev examples | test examples |", "|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in records if r["method"] == m and r["shots"] == shots]
        if not rs:
            continue
        zero = sum(r["best_step"] == 0 for r in rs)
        dev, test = ("–".join(sorted({f"{r[k]:,}" for r in rs if k in r})) or "?" for k in ("dev_examples",
                                                                                        "test_examples"))
        lines.append(f"| {m} | {len(rs)} | {zero} ({100 * zero / len(rs):.0f} %) | {dev} | {test} |")
    return lines
