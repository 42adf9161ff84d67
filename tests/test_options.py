"""Every option of every subcommand either acts or is refused with a one-line error (never accepted and ignored).

The walk reads the options from the real parser, so a new option fails here until it is classified:

- `source` / `target` (where ignored options were found): each option is tried on a tiny run and must change
  what the run computes (prompts, losses, scores, predictions; not merely the recorded options), be refused,
  or, when declared result-neutral in bmtpt.config, leave every number unchanged. The few whose effect needs
  another setting than a tiny synthetic run (a real data folder, a hub model, a multi-token target) name the
  test that shows it.
- the other commands: each option must be exercised by some test (its flag, or its field set by name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bmtpt.cli as cli_mod
from bmtpt.config import SourceConfig, TargetConfig, result_neutral_options
from bmtpt.errors import BmtptError
from bmtpt.source import run_source
from bmtpt.train import train_target

TESTS = Path(__file__).parent
# the posterior is declared neutral for the cell hash and the resume check, which compare its source stage and
# its files' digest instead of its path; what it holds of course changes the run
NEUTRAL = result_neutral_options() - {"posterior"}

# what shows an option acts when a tiny synthetic run cannot: "file.py::test_name"
ELSEWHERE = {
    "config": "test_cli.py::test_yaml_config_sets_options_and_the_command_line_wins",
    "model": "test_cli_errors.py::test_posterior_of_another_backbone_is_refused_without_the_flag",
    "out": "test_resume.py::test_folder_rules_for_resume_and_overwrite",
    "data_dir": "test_cli_errors.py::test_empty_training_set",
    "device": "test_runs.py::test_device_option_is_resolved_or_refused",
    "trust_remote_code": "test_options.py::test_trust_remote_code_reaches_the_loader",
    "resume": "test_resume.py::test_source_interrupted_and_resumed_equals_uninterrupted",
    "overwrite": "test_resume.py::test_folder_rules_for_resume_and_overwrite",
    "max_target_tokens": "test_data.py::test_targets_are_cut_to_max_target_tokens",
    "verbalizers": "test_verbalizers.py::test_seq2seq_backbones_and_the_labels_mode_keep_the_labels",
    "compile": "test_prompted.py::test_compiled_training_forward_matches_eager",
    "mixing": "test_source.py::test_mixing_sizes_by_hand",
    "prior_bandwidth_from": "test_experiment.py::test_an_m1_ablation_borrows_the_m_particle_stages_bandwidth",
    "allow_other_backbone": "test_cli_errors.py::test_posterior_of_another_backbone_is_refused_without_the_flag",
}

SOURCE_BASE = dict(model="tiny-llama", tasks="synth-sentiment,synth-animal", particles=2, steps=2, batch_size=4,
                   prompt_length=3, max_train_examples=8, log_every=1, progress=False, device="cpu")
# option -> value that must change the numbers ("acts"), or ("refused", value, fragment)
SOURCE_TRIES = {
    "prompt_length": 4, "batch_size": 6, "lr": 0.05, "optimizer": "sgd", "weight_decay": 0.5, "max_input_tokens": 6,
    "max_train_examples": 4, "precision": "bf16", "log_every": 2, "seed": 1, "tasks": "synth-sentiment,synth-past",
    "particles": 3, "steps": 3, "method": "independent", "init": "uniform",
    "mixing_temperature": ("refused", 3.0, "applies to --mixing temperature"),
    "likelihood_scale": "dataset", "prior_std": 0.5, "bandwidth": 0.5, "kernel_view": "row-mean",
    "task_weights": "1,0.25", "repulsion": 4.0, "repulsion_schedule": "decay", "final_eval_examples": 4,
    "specialise": 0.1,
    # result-neutral: tried with these values, every number must stay the same
    "particle_chunk": 1, "gradient_checkpointing": True, "grad_accum": 2, "checkpoint_every": 1, "progress": True,
    "parallel": "particle",  # one process here; tests/test_distributed.py runs two
    "interference_every": 1,  # a diagnostic: it adds log records, the particles stay the same
}
TARGET_BASE = dict(model="tiny-llama", task="synth-product", steps=2, eval_every=1, batch_size=4,
                   max_train_examples=8, max_eval_examples=6, train_eval_examples=4, log_every=1, progress=False,
                   device="cpu")
TARGET_TRIES = {
    "prompt_length": ("refused", 5, "the posterior's prompts are 3 long"), "batch_size": 6, "lr": 0.05,
    "optimizer": "sgd", "weight_decay": 0.5, "max_input_tokens": 6, "max_train_examples": 4, "precision": "bf16",
    "particle_chunk": ("refused", 1, "a target run trains one prompt"), "log_every": 2, "seed": 1,
    "task": "synth-tense", "posterior": "other", "method": "avg", "steps": 3, "init": "particle:1",
    "prior_weight": 50.0, "prior": "gaussian", "prior_weight_rule": "bayes", "prior_bandwidth": 0.05,
    "prior_bandwidth_scale": 0.05, "rank_one": True, "lr_factor": ("refused", 0.5, "add --rank-one"), "shots": 2,
    "eval_every": 2, "train_eval_examples": 2, "max_dev_examples": 3, "max_eval_examples": 4,
    "eval_mode": "generate", "dev_sample": "test-mix", "particle_weights": "target",
    "gradient_checkpointing": True, "grad_accum": 2, "checkpoint_every": 1, "progress": True, "eval_batch_size": 2,
    "particles": 2, "ensemble": ("refused", "independent", "--ensemble applies to --particles M > 1"),
    # ATTEMPT's options: refused for the base run's bmtpt; tests/test_attempt.py runs them
    "attention_lr": ("refused", 0.5, "--method attempt's attention"),
    "attention_rank": ("refused", 8, "--method attempt's attention"),
    "attention_temperature": ("refused", 2.0, "--method attempt's attention"),
}
# refusals that depend on the method (a prompt-tuning run has no posterior and no prior)
PT_REFUSALS = {"posterior": "reads no --posterior", "allow_other_backbone": "reads none",
               "prior_weight": "has none", "prior_bandwidth_from": "has none"}


def _options(command: str) -> list[str]:
    parser = cli_mod.make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a.dest for a in sub.choices[command]._actions if not isinstance(a, argparse._HelpAction)]


def _elsewhere_exists(ref: str) -> bool:
    file, name = ref.split("::")
    return re.search(rf"^def {name}\(", (TESTS / file).read_text(), re.M) is not None


# diagnostics that result-neutral options may add to the log without changing what the run computes (a step
# that probes the task interference is logged even off the --log-every grid)
DIAGNOSTIC_LOG_KEYS = {"interference"}


def _numbers(out: Path, kind: str) -> dict:
    """What a run computed, without the options it records, the wall clock or diagnostic log records."""
    logs = [{k: v for k, v in json.loads(line).items() if k != "time_s" and k not in DIAGNOSTIC_LOG_KEYS}
            for line in (out / "metrics.jsonl").read_text().splitlines()]
    if kind == "source":
        meta = json.loads((out / "posterior.json").read_text())
        return {"particles": load_file(str(out / "particles.safetensors"))["particles"], "log": logs,
                "bandwidth": meta["bandwidth"], "final_dev": meta.get("final_dev")}
    meta = json.loads((out / "target.json").read_text())
    tensors = load_file(str(out / "prompt.safetensors"))
    return {"prompt": tensors.get("prompt", tensors.get("particles")), "log": logs, "metrics": meta["metrics"],
            "predictions": json.loads((out / "predictions-test.json").read_text())}


def _same(a, b, tol: float = 1e-5) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=tol, rtol=tol)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol * max(1.0, abs(a))
    return a == b


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama):
    """The base source run, a second posterior, and the base target run (on the first posterior)."""
    root = tmp_path_factory.mktemp("options")
    run_source(SourceConfig(**{**SOURCE_BASE, "out": str(root / "src")}), *tiny_llama)
    run_source(SourceConfig(**{**SOURCE_BASE, "out": str(root / "other"), "seed": 7}), *tiny_llama)
    base = {**TARGET_BASE, "posterior": str(root / "src")}
    train_target(TargetConfig(**{**base, "out": str(root / "tgt")}), *tiny_llama)
    return root, base


def test_every_source_and_target_option_is_classified():
    for command, tries in (("source", SOURCE_TRIES), ("target", TARGET_TRIES)):
        unclassified = [o for o in _options(command) if o not in tries and o not in ELSEWHERE]
        assert not unclassified, f"bmtpt {command}: classify {unclassified} in tests/test_options.py"
    for ref in ELSEWHERE.values():
        assert _elsewhere_exists(ref), ref


@pytest.mark.parametrize("option", list(SOURCE_TRIES))
def test_each_source_option_acts_or_is_refused(option, runs, tiny_llama, tmp_path):
    root, _ = runs
    _walk("source", option, SOURCE_TRIES[option], {**SOURCE_BASE, "out": str(tmp_path / "run")}, root / "src",
          tiny_llama)


@pytest.mark.parametrize("option", list(TARGET_TRIES))
def test_each_target_option_acts_or_is_refused(option, runs, tiny_llama, tmp_path):
    root, base = runs
    value = TARGET_TRIES[option]
    if option == "posterior":
        value = str(root / "other")
    _walk("target", option, value, {**base, "out": str(tmp_path / "run")}, root / "tgt", tiny_llama)


def _walk(kind: str, option: str, value, base: dict, reference: Path, tiny_llama) -> None:
    cls, run = (SourceConfig, run_source) if kind == "source" else (TargetConfig, train_target)
    if isinstance(value, tuple):  # ("refused", value, fragment)
        _, bad, fragment = value
        with pytest.raises(BmtptError, match=re.escape(fragment)) as err:
            run(cls(**{**base, option: bad}), *tiny_llama)
        assert "\n" not in str(err.value)
        return
    default = next(f.default for f in dataclasses.fields(cls) if f.name == option)
    assert value != base.get(option, default), f"try {option} with a value other than the base run's"
    run(cls(**{**base, option: value}), *tiny_llama)
    same = _same(_numbers(Path(base["out"]), kind), _numbers(reference, kind))
    if option in NEUTRAL:
        assert same, f"--{option} is declared result-neutral but changed the numbers"
    else:
        assert not same, f"--{option} {value} was accepted and changed nothing"


@pytest.mark.parametrize("option", list(PT_REFUSALS))
def test_options_of_a_posterior_or_prior_are_refused_for_prompt_tuning(option, tmp_path):
    value = {"posterior": str(tmp_path), "allow_other_backbone": True, "prior_weight": 2.0,
             "prior_bandwidth_from": str(tmp_path)}[option]
    with pytest.raises(BmtptError, match=re.escape(PT_REFUSALS[option])):
        TargetConfig(**{**TARGET_BASE, "out": str(tmp_path / "o"), "method": "pt", option: value}).validate()


@pytest.mark.parametrize("option, value", [("bandwidth", 2.0), ("kernel_view", "row-mean"), ("repulsion", 3.0),
                                           ("repulsion_schedule", "anneal"), ("interference_every", 5)])
def test_svgd_kernel_options_are_refused_for_independent_prompts(option, value, tmp_path):
    with pytest.raises(BmtptError, match="--method independent trains each prompt alone"):
        SourceConfig(**{**SOURCE_BASE, "out": str(tmp_path), "method": "independent", option: value}).validate()


def test_trust_remote_code_reaches_the_loader(runs, monkeypatch, tmp_path, capsys):
    """Every command that loads a backbone, its tokenizer or its config hands the flag to the loader (which
    passes it to transformers; with it off, a model with its own code on the hub is refused there)."""
    import bmtpt.backbone
    import bmtpt.bench.steps
    import bmtpt.evaluate
    import bmtpt.interop

    root, _ = runs
    seen: list[tuple[str, bool]] = []

    def loader(what):
        def load(name, trust_remote_code=False, *_a, **_k):
            seen.append((what, trust_remote_code))
            raise BmtptError("stop here")
        return load

    for module in (bmtpt.backbone, bmtpt.evaluate, bmtpt.bench.steps):
        monkeypatch.setattr(module, "load_backbone", loader("model"))
    monkeypatch.setattr(bmtpt.backbone, "load_tokenizer", loader("tokenizer"))
    monkeypatch.setattr(bmtpt.interop, "backbone_task_type", loader("config"))
    (tmp_path / "in.jsonl").write_text('{"input": "a fine product"}\n')
    model = ["--model", "some/hub-model"]
    commands = {
        "source": ["source", "--tasks", "synth-animal", "--out", tmp_path / "s", *model, "--device", "cpu"],
        "target": ["target", "--task", "synth-product", "--method", "pt", "--out", tmp_path / "t", *model,
                   "--device", "cpu"],
        "eval": ["eval", root / "tgt", "--device", "cpu"],
        "predict": ["predict", root / "tgt", "--input", tmp_path / "in.jsonl", "--output", tmp_path / "p.jsonl",
                    "--device", "cpu"],
        "export": ["export", root / "tgt", tmp_path / "adapter"],
        "tasks": ["tasks", *model],
        "bench": ["bench", "speed", "--backbone", "some/hub-model", "--device", "cpu", "--out", tmp_path / "b.json"],
        "inspect": ["inspect", root / "src", "--target", "synth-product", *model, "--device", "cpu", "--no-plots"],
    }
    for name, args in commands.items():
        for flag in (False, True):
            seen.clear()
            cli_mod.main([str(a) for a in [*args, *(["--trust-remote-code"] if flag else [])]])
            assert seen and all(given is flag for _, given in seen), (name, flag, seen)
    capsys.readouterr()
    assert set(commands) | {"config", "demo", "experiment", "tiny-model"} >= {
        c for c in _commands() if "trust_remote_code" in _options(c)}, "a command with the flag is not tried here"


def _commands() -> list[str]:
    parser = cli_mod.make_parser()
    return list(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


@pytest.mark.parametrize("command", ["eval", "predict", "tiny-model", "export", "demo", "bench", "tasks",
                                     "experiment"])
def test_every_option_of_the_other_commands_is_exercised_by_a_test(command):
    parser = cli_mod.make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = "\n".join(p.read_text() for p in TESTS.glob("test_*.py"))
    missing = []
    for action in sub.choices[command]._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue  # positionals are the command's required inputs: every test of it passes them
        dest = action.dest
        if not any(flag in text for flag in action.option_strings) and not re.search(
                rf"\b{dest}=|[\"']{dest}[\"']\s*:", text):
            missing.append(action.option_strings[0])
    assert not missing, f"bmtpt {command}: no test exercises {missing}"
