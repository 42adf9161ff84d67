"""The `bmtpt` command line, in-process through `bmtpt.cli.main`, plus one real `python -m bmtpt`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from helpers import SMALL as TINY_RUN
from helpers import assert_one_line_error, cli

from bmtpt.cli import main
from bmtpt.synth import SOURCE_TASKS, TARGET_TASKS

SMALL = [*TINY_RUN, "--max-train-examples", "8"]


def test_help_in_a_real_subprocess():
    res = subprocess.run([sys.executable, "-m", "bmtpt", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for command in ("source", "target", "eval", "tasks", "tiny-model"):
        assert command in res.stdout


def test_tasks_lists_the_synth_suite(capsys):
    rc, out, _ = cli(capsys, "tasks", "--suite", "synth")
    assert rc == 0
    listed = {line.split()[0] for line in out.strip().splitlines()[1:]}
    assert listed == set(SOURCE_TASKS) | set(TARGET_TASKS)
    rc, out, _ = cli(capsys, "tasks")
    assert rc == 0 and all(t in out for t in SOURCE_TASKS)


def test_tiny_model_writes_a_loadable_model(tmp_path, capsys):
    rc, out, _ = cli(capsys, "tiny-model", tmp_path / "m", "--arch", "llama")
    assert rc == 0 and "llama" in out
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llama"
    rc, _, err = cli(capsys, "tiny-model", tmp_path / "m", "--arch", "llama")
    assert_one_line_error(rc, err, "tiny-model", "--overwrite")


def test_source_target_eval_pipeline(tmp_path, tiny_dirs, capsys):
    model = tiny_dirs["llama"]
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    rc, out, err = cli(capsys, "source", "--model", model, "--out", src, "--tasks", "synth-sentiment,synth-animal",
                       "--particles", "2", "--steps", "2", *SMALL)
    assert rc == 0, err
    assert "particles.safetensors" in out
    written = {p.name for p in src.iterdir()}
    assert {"particles.safetensors", "posterior.json", "metrics.jsonl", "config.yaml"} <= written
    assert json.loads((src / "posterior.json").read_text())["num_particles"] == 2

    rc, out, err = cli(capsys, "target", "--model", model, "--out", tgt, "--posterior", src, "--task", "synth-product",
                       "--steps", "2", "--eval-every", "1", "--max-eval-examples", "8", *SMALL)
    assert rc == 0, err
    meta = json.loads((tgt / "target.json").read_text())
    assert {"dev", "test", "best_step"} <= set(meta["metrics"]) and (tgt / "prompt.safetensors").is_file()
    shown = json.loads(out[: out.rindex("}") + 1])
    assert shown["test"] == meta["metrics"]["test"]

    rc, out, err = cli(capsys, "eval", tgt, "--split", "dev", "--max-eval-examples", "8", "--device", "cpu")
    assert rc == 0, err
    ev = json.loads((tgt / "eval-dev.json").read_text())
    assert ev["split"] == "dev" and ev["results"]["synth-product"]["examples"] == 8
    assert 0 <= ev["results"]["synth-product"]["accuracy"] <= 100

    rc, _, err = cli(capsys, "eval", src, "--split", "dev", "--max-eval-examples", "4", "--device", "cpu")
    assert rc == 0, err
    assert set(json.loads((src / "eval-dev.json").read_text())["results"]) == {"synth-sentiment", "synth-animal"}

    # the same --out again without --overwrite: refused, and nothing in the folder is touched
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    rc, _, err = cli(capsys, "source", "--model", model, "--out", src, "--tasks", "synth-animal", "--steps", "1",
                     *SMALL)
    assert_one_line_error(rc, err, "source", "already holds results", "--overwrite")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_yaml_config_sets_options_and_the_command_line_wins(tmp_path, tiny_dirs, capsys):
    conf = tmp_path / "run.yaml"
    conf.write_text(yaml.safe_dump({"command": "source", "model": str(tiny_dirs["llama"]), "tasks": ["synth-past",
                                    "synth-animal"], "particles": 3, "steps": 7, "prompt-length": 2, "batch_size": 3,
                                    "max_train_examples": 6, "progress": False, "device": "cpu", "lr": 0.1}))
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "source", "--config", conf, "--out", out, "--steps", "1", "--lr", "0.05")
    assert rc == 0, err
    used = yaml.safe_load((out / "config.yaml").read_text())
    assert used["steps"] == 1 and used["lr"] == 0.05  # command line
    assert used["particles"] == 3 and used["prompt_length"] == 2 and used["tasks"] == "synth-past,synth-animal"
    meta = json.loads((out / "posterior.json").read_text())
    assert (meta["num_particles"], meta["prompt_length"]) == (3, 2)


def test_existing_results_of_a_user_folder_are_kept(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "posterior.json").write_text("mine")
    (run / "notes.txt").write_text("keep me")
    rc, _, err = cli(capsys, "source", "--model", "x", "--out", run, "--tasks", "synth-animal", "--steps", "1")
    assert_one_line_error(rc, err, "source", "posterior.json")
    assert (run / "posterior.json").read_text() == "mine" and (run / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "posterior.json"]


@pytest.mark.parametrize("args, command, fragments", [
    (["source", "--tasks", "synth-sentimnt,synth-animal"], "source", ["unknown task", "did you mean synth-sentiment"]),
    (["target", "--task", "synth-prodct", "--method", "pt"], "target", ["did you mean synth-product"]),
    (["source", "--tasks", "synth-animal", "--steps", "-1"], "source", ["--steps must be positive"]),
    (["source", "--tasks", "synth-animal", "--lr", "0"], "source", ["--lr must be positive"]),
    (["target", "--task", "synth-product", "--lr", "0"], "target", ["--lr must be positive"]),
    (["target", "--task", "synth-product", "--posterior", "{tmp}/nowhere"], "target", ["does not exist"]),
    (["source", "--tasks", "synth-animal", "--data-dir", "{tmp}/no-data"], "source", ["no-data", "does not exist"]),
    (["eval", "{tmp}/no-run"], "eval", ["does not exist"]),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, command, fragments):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if command != "eval":
        args += ["--model", "x", "--out", str(tmp_path / "out"), "--no-progress"]
    rc, _, err = cli(capsys, *args)
    assert_one_line_error(rc, err, command, *fragments)
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_unknown_yaml_key_exits_2(tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("tasks: synth-animal\nparticels: 3\n")
    rc, _, err = cli(capsys, "source", "--config", conf, "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "source", "unknown option", "particels")
    rc, _, err = cli(capsys, "source", "--config", tmp_path / "missing.yaml", "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "source", "does not exist")


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["source", "--optimizer", "rmsprop"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "rmsprop" in err and "Traceback" not in err


def test_the_readmes_commands_parse():
    """Every `bmtpt ...` line of the README's Commands block names real subcommands and options (optional
    parts in [...] left out, `a|b` alternatives taken at their first), so the README stays true."""
    import re
    import shlex
    from pathlib import Path

    from bmtpt.cli import make_parser

    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [c for c in re.sub(r"\\\n\s*", " ", block).splitlines() if c.strip().startswith("bmtpt ")]
    assert len(commands) >= 10
    parser = make_parser()
    for line in commands:
        line = re.sub(r"\[[^\]]*\]", "", line.split("#")[0])
        args = [a.split("|")[0] for a in shlex.split(line)[1:]]
        parser.parse_args(args)  # an unknown option or a bad choice exits 2 and fails the test
        sub = next(a for a in parser._actions if a.choices and args[0] in a.choices).choices[args[0]]
        spelled = [a.split("=")[0] for a in args if a.startswith("--")]
        assert all(o in sub._option_string_actions for o in spelled), line  # no abbreviations either
