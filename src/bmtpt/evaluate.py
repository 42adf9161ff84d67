"""`bmtpt eval`: re-evaluate a saved run on a split and write the metrics next to it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from .backbone import embedding_width, load_backbone
from .errors import BmtptError
from .prompted import PromptedModel
from .runfiles import atomic_write_json, load_posterior, load_prompt_tensor, read_json_object, refuse_ensemble
from .runs import check_data_dir, load_split, resolve_device
from .target import predict_score_calibrate
from .tasks import get_task
from .toolconfig import EvalConfig


def run_eval(cfg: EvalConfig, model=None, tokenizer=None) -> dict:
    """Metrics of the run's prompt on cfg.split: {task: {metric: value, 'score': mean}}.

    A target run evaluates its prompt on its task; a source run evaluates the particles' mean prompt
    on every source task. A rank-classified task also gets 'calibration' (accuracy, NLL, ECE over 15 bins,
    accuracy on the 80 % most confident: `metrics.calibration`). The result is also written to
    RUN_DIR/eval-SPLIT.json.
    """
    cfg.validate()
    run = Path(cfg.run_dir).expanduser()
    if not run.is_dir():
        raise BmtptError(f"run folder {run} does not exist")
    if (run / "target.json").is_file():
        meta = read_json_object(run / "target.json")
        refuse_ensemble(meta, run)
        prompt = load_prompt_tensor(run / "prompt.safetensors")
        task_names = [meta.get("task_file") or meta["task"]]  # a custom task is found again by its file
    elif (run / "posterior.json").is_file():
        particles, meta = load_posterior(run)
        prompt = particles.mean(0)
        files = meta.get("source_task_files") or [None] * len(meta["source_tasks"])
        task_names = [f or n for n, f in zip(meta["source_tasks"], files)]
    else:
        raise BmtptError(f"{run} holds neither target.json nor posterior.json")
    hp = meta.get("hyperparameters", {})
    data_dir = cfg.data_dir if cfg.data_dir is not None else hp.get("data_dir")
    check_data_dir(data_dir)
    device = resolve_device(cfg.device)
    if model is None:
        model, tokenizer = load_backbone(cfg.model or meta["backbone"], cfg.trust_remote_code, device=device)
    if embedding_width(model) != prompt.shape[-1]:
        raise BmtptError(f"the run's prompt is {prompt.shape[-1]} wide but the backbone embeds in "
                         f"{embedding_width(model)}")
    pm = PromptedModel(model, tokenizer, cfg.precision, hp.get("max_input_tokens", 256),
                       verbalizers=hp.get("verbalizers", "auto"), eval_mode=cfg.eval_mode)
    pm.progress = cfg.progress
    results = {}
    split_cfg = SimpleNamespace(data_dir=data_dir, seed=hp.get("seed", 0))
    for name in task_names:
        task = get_task(name)
        # the run's own rule: a capped split is the same fixed sample the target stage scored
        examples = load_split(task, cfg.split, split_cfg, cfg.max_eval_examples)
        # rank-classified tasks also get the calibration of their label probabilities (as target runs record)
        m, _, calib = predict_score_calibrate(pm, prompt.to(pm.device), task, examples, cfg)  # m has 'score'
        results[task.name] = {**m, "examples": len(examples), **({"calibration": calib} if calib else {})}
    atomic_write_json({"split": cfg.split, "eval_mode": cfg.eval_mode, "results": results},
                      run / f"eval-{cfg.split}.json")
    return results
