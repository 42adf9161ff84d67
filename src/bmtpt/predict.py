"""`bmtpt predict`: run a trained prompt on new inputs.

    bmtpt predict RUN_DIR --input rows.jsonl --output predictions.jsonl

RUN_DIR is a target run folder, or a PEFT prompt-tuning adapter folder written by `bmtpt export` (its
`bmtpt.json` names the task; an adapter from elsewhere needs --task, and --model unless its config names
the base model). Inputs are JSONL rows holding the task's input columns (a task YAML's template fields;
for a built-in task, `input`: the text as the task writes it, see docs/tasks.md), or plain text lines when
the task reads one column. One JSONL line comes out per input row, in order:
`{"prediction": LABEL, "probabilities": {LABEL: p, ...}}` for classification (labels as the task's data
names them; p the softmax over the verbalizers' log-likelihoods, which rank classification compares) and
`{"prediction": TEXT}` for generation.

The Python API: `predictor = Predictor.load(run_dir)`, then `predictor.predict(rows)` on dicts or strings.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from .config import opt
from .errors import BmtptError
from .tasks import Example, Task, get_task

ADAPTER_META = "bmtpt.json"  # written beside a PEFT adapter by `bmtpt export`: the task and how it was read


@dataclass
class PredictConfig:
    """`bmtpt predict`: predictions of a trained prompt on new inputs, one JSONL line per input."""

    run_dir: str = opt("", "a target run folder, or a PEFT prompt-tuning adapter folder", positional=True)
    input: str = opt("-", "JSONL rows with the task's input columns, or plain text lines for a task with one "
                     "input column ('-': standard input)")
    output: str = opt("-", "where the JSONL predictions go ('-': standard output); an existing file is refused "
                      "unless --overwrite")
    batch_size: int = opt(32, "inputs per forward pass")
    task: str | None = opt(None, "the task (a name or a task YAML): default the run's; needed for an adapter "
                           "without bmtpt.json")
    model: str | None = opt(None, "backbone (default: the run's, or the adapter's base model)")
    device: str = opt("auto", "torch device")
    precision: str = opt("fp32", "autocast precision of the backbone", ("fp32", "bf16", "fp16"))
    trust_remote_code: bool = opt(False, "allow the backbone's own Python code from the hub to run")
    overwrite: bool = opt(False, "replace an existing --output file")
    progress: bool = opt(True, "show a progress bar on long inputs")

    def validate(self) -> None:
        """Raise BmtptError on values that cannot work."""
        if not self.run_dir:
            raise BmtptError("a run folder (or adapter folder) is required")
        if self.batch_size <= 0:
            raise BmtptError(f"--batch-size must be positive, got {self.batch_size}")
        if self.output != "-" and Path(self.output).exists() and not self.overwrite:
            raise BmtptError(f"--output {self.output} exists; pass --overwrite to replace it")


def input_fields(task: Task) -> tuple[str, ...]:
    """The columns an input row needs: a task file's template fields, else the whole input text."""
    if task.source_file:
        from .custom import parse_task_file

        return parse_task_file(task.source_file).fields
    return ("input",)


def to_example(task: Task, row: dict | str, where: str) -> Example:
    """One input row (a dict of columns, or a line of text for a one-column task) as an Example."""
    fields = input_fields(task)
    if isinstance(row, str):
        if len(fields) != 1:
            raise BmtptError(f"{where}: task {task.name} reads {len(fields)} columns ({', '.join(fields)}); give "
                             "JSONL rows, not plain text")
        row = {fields[0]: row}
    missing = [f for f in fields if f not in row]
    if missing:
        raise BmtptError(f"{where}: missing column(s) {', '.join(missing)} (task {task.name} reads "
                         f"{', '.join(fields)})")
    if not task.source_file:
        return Example(str(row["input"]), "")
    from .custom import parse_task_file

    template = parse_task_file(task.source_file).template
    return Example(template.format(**{f: str(row[f]).strip() for f in fields}), "")


def read_inputs(path: str) -> list[tuple[str, dict | str]]:
    """(where, row) of every non-empty line: a JSON object, or the line's text when it is not JSON."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise BmtptError(f"cannot read --input {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise BmtptError(f"--input {path}: not UTF-8 text ({e.reason})") from None
    name = "stdin" if path == "-" else path
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                rows.append((f"{name} line {n}", json.loads(stripped)))
                continue
            except json.JSONDecodeError as e:
                raise BmtptError(f"{name} line {n}: not valid JSON ({e.msg})") from None
        rows.append((f"{name} line {n}", stripped))
    return rows


def locate(run_dir: str | Path, task: str | None = None, model: str | None = None) -> tuple:
    """(prompt, task, backbone name, how inputs were read) of a target run folder or a PEFT adapter folder,
    without loading the backbone (so that bad inputs are reported before the slow part)."""
    from .runfiles import ADAPTER_CONFIG, read_json_object, read_peft_adapter, read_run_prompt

    run = Path(run_dir).expanduser()
    if (run / "target.json").is_file():
        meta = read_json_object(run / "target.json")
        hp = meta.get("hyperparameters", {})
        prompt, base = read_run_prompt(run).prompt, meta.get("backbone")
        task = task or meta.get("task_file") or meta.get("task")
    elif (run / ADAPTER_CONFIG).is_file():
        prompt, config = read_peft_adapter(run)
        hp = read_json_object(run / ADAPTER_META) if (run / ADAPTER_META).is_file() else {}
        base = hp.get("backbone") or config.get("base_model_name_or_path")
        task = task or hp.get("task_file") or hp.get("task")
    else:
        raise BmtptError(f"{run} is neither a target run folder (target.json) nor a PEFT adapter folder "
                         f"({ADAPTER_CONFIG})")
    if not task:
        raise BmtptError(f"{run} does not name its task: pass --task NAME or --task TASK.yaml")
    if not (model or base):
        raise BmtptError(f"{run} does not name its backbone: pass --model")
    return prompt, get_task(task), model or base, hp


class Predictor:
    """A trained prompt, its task and its backbone, loaded once; `predict` maps input rows to predictions."""

    def __init__(self, prompt, task: Task, model, tokenizer, max_input_tokens: int = 256,
                 verbalizers: str = "auto", precision: str = "fp32", batch_size: int = 32, progress: bool = False):
        from .prompted import PromptedModel

        self.task, self.batch_size = task, batch_size
        self.pm = PromptedModel(model, tokenizer, precision, max_input_tokens, verbalizers=verbalizers)
        self.pm.progress = progress
        self.prompt = prompt.to(self.pm.device)

    @classmethod
    def load(cls, run_dir: str | Path, task: str | None = None, model: str | None = None, device: str = "auto",
             precision: str = "fp32", batch_size: int = 32, trust_remote_code: bool = False,
             progress: bool = False, backbone=None) -> Predictor:
        """Load a target run folder or a PEFT adapter folder (and its backbone, unless `backbone` gives
        (model, tokenizer))."""
        from .backbone import embedding_width
        from .runs import load_model, resolve_device

        prompt, the_task, model, hp = locate(run_dir, task, model)
        if backbone is None:
            opts = SimpleNamespace(model=model, trust_remote_code=trust_remote_code, progress=progress)
            backbone = load_model(opts, resolve_device(device))
        if embedding_width(backbone[0]) != prompt.shape[1]:
            raise BmtptError(f"the prompt in {run_dir} is {prompt.shape[1]} wide but backbone {model} embeds in "
                             f"{embedding_width(backbone[0])}")
        return cls(prompt, the_task, *backbone, hp.get("max_input_tokens", 256), hp.get("verbalizers", "auto"),
                   precision, batch_size, progress)

    def predict(self, rows: Sequence[dict | str], where: Iterable[str] | None = None) -> list[dict]:
        """One result per row: {"prediction", "probabilities"} (classification) or {"prediction"}."""
        import torch  # torch-heavy imports stay out of `bmtpt --help`

        names = list(where) if where is not None else [f"input {i + 1}" for i in range(len(rows))]
        examples = [to_example(self.task, row, w) for row, w in zip(rows, names)]
        if not examples:
            return []
        with torch.no_grad():
            if self.task.is_classification:
                words = self.pm.words(self.task)
                verbs = list(self.task.verbalizers)
                _, ll = self.pm.rank_classify(self.prompt, examples, [words[v] for v in verbs], self.batch_size)
                probs = torch.softmax(ll.double(), dim=-1)
                label = (self.task.label_names or {}).get
                return [{"prediction": label(verbs[int(p.argmax())], verbs[int(p.argmax())]),
                         "probabilities": {label(v, v): round(float(x), 6) for v, x in zip(verbs, p)}}
                        for p in probs]
            texts = self.pm.generate(self.prompt, examples, self.task.max_target_tokens, self.batch_size)
        return [{"prediction": t} for t in texts]


def run_predict(cfg: PredictConfig, backbone=None) -> list[dict]:
    """`bmtpt predict`: read the inputs, predict, write one JSONL line per input (nothing on an error)."""
    cfg.validate()
    rows = read_inputs(cfg.input)  # input errors before the slow model load
    task = locate(cfg.run_dir, cfg.task, cfg.model)[1]
    for where, row in rows:  # every row checked before any work
        to_example(task, row, where)
    predictor = Predictor.load(cfg.run_dir, cfg.task, cfg.model, cfg.device, cfg.precision, cfg.batch_size,
                               cfg.trust_remote_code, cfg.progress, backbone)
    results = predictor.predict([r for _, r in rows], [w for w, _ in rows])
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    if cfg.output == "-":
        sys.stdout.write(text)
    else:
        from .runfiles import atomic_write_bytes

        atomic_write_bytes(text.encode(), Path(cfg.output).expanduser())
    return results
