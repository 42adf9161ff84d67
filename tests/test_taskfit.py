"""`bmtpt tasks --model`: label words per backbone and inputs over the length limit, against brute force."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmtpt.cli import main
from bmtpt.taskfit import fit_table, truncated_counts
from bmtpt.tasks import get_task

DATA = Path(__file__).parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "MANIFEST.md").is_file(), reason=f"benchmark files not found at {DATA}")


@needs_data
def test_truncated_counts_match_a_loop_over_the_inputs(tiny_llama):
    _, tok = tiny_llama
    task = get_task("rte")
    counts = truncated_counts(task, tok, str(DATA), 40)
    for split in ("train", "dev", "test"):
        inputs = [e.input for e in task.load(split, str(DATA))]
        assert counts[split] == (sum(len(tok(t).input_ids) > 40 for t in inputs), len(inputs))
    assert 0 < counts["test"][0] < counts["test"][1]


@needs_data
def test_fit_table_reports_missing_files_and_shares(tiny_llama):
    _, tok = tiny_llama
    table = fit_table([get_task("rte"), get_task("mnli")], tok, False, "tiny", data_dir=str(DATA), max_tokens=40)
    rows = {line.split(" | ")[0].strip("| `"): line for line in table.splitlines()[2:]}
    assert "missing | missing | missing" in rows["mnli"]
    counts = truncated_counts(get_task("rte"), tok, str(DATA), 40)
    cut, total = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    assert f"{100 * cut / total:.1f} % of {total:,}" in rows["rte"]


def test_fit_table_names_the_label_words(tiny_llama):
    _, tok = tiny_llama  # the tiny vocabulary has "yes" and "no" but not "not_entailment"
    table = fit_table([get_task("rte"), get_task("sst2"), get_task("squad")], tok, False, "tiny")
    assert "entailment=yes, not_entailment=no" in table and "(generated text)" in table


@pytest.mark.parametrize("argv,fragment", [
    (["tasks", "--max-input-tokens", "64"], "give --model and --data-dir"),
    (["tasks", "--model", "nowhere/at/all", "--data-dir", "."], "cannot load the tokenizer"),
])
def test_tasks_model_errors_are_one_line(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
