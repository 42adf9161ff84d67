"""`bmtpt inspect RUN_DIR`: which source tasks help or hurt each other in a source posterior, and (with
--target) how much each source should help a target task.

- The interference matrix: the source stage logs, every --interference-every steps, the
  cosine similarity of every pair of tasks' score directions (per particle, averaged over particles;
  `svgd.task_interference`). Here it is averaged over the logged steps. Positive: the tasks pull the
  particles the same way (they help each other); negative: they conflict.
- Per-particle task losses: the last logged (M, K) matrix of each particle's mean token NLL per task, and
  the sources each particle favours (the tasks on which its loss is below the particles' mean).
- --target TASK: at the particles' mean prompt, the gradient of the target's mean token NLL on a sample of
  its training examples, against each source's; a source whose score points the target's way (cosine > 0)
  should help the target, one pointing away should hurt it. A first-order estimate, as gradient-alignment
  measures of task relatedness are; `benchmarks/` has no leave-one-source-out check of it yet.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import BmtptError
from .runfiles import load_posterior, read_jsonl_log
from .svgd import task_interference
from .toolconfig import InspectConfig


def interference_matrix(run_dir: Path) -> tuple[list[list[float]] | None, int]:
    """(K x K interference averaged over the logged steps, how many steps were logged); (None, 0) for a run
    that logged none (an independent run, one task, fewer steps than --interference-every, or turned off)."""
    records = [r for r in _log(run_dir) if "interference" in r]
    if not records:
        return None, 0
    mats = torch.tensor([r["interference"] for r in records], dtype=torch.float64)
    return mats.mean(0).tolist(), len(records)


def particle_task_losses(run_dir: Path) -> list[list[float]] | None:
    """The last logged (M, K) per-particle per-task losses (None for runs that did not log them)."""
    rows = [r["particle_task_loss"] for r in _log(run_dir) if "particle_task_loss" in r]
    return rows[-1] if rows else None


def favoured(losses: list[list[float]], names: list[str]) -> list[list[str]]:
    """For each particle, the tasks on which its loss is below the particles' mean loss on that task."""
    t = torch.tensor(losses, dtype=torch.float64)
    below = t < t.mean(0, keepdim=True)
    return [[names[k] for k in range(len(names)) if below[m, k]] for m in range(t.shape[0])]


def score_alignment(pm, prompt: torch.Tensor, samples: dict[str, tuple], max_target_tokens: int = 32
                    ) -> dict[str, torch.Tensor]:
    """Each task's score at `prompt` (l, d): minus the gradient of its mean token NLL over its examples.
    `samples` maps a name to (task, examples)."""
    from .data import batch_of

    out = {}
    for name, (task, examples) in samples.items():
        enc = pm.encode(task, examples, max_target_tokens)
        leaf = prompt.detach().clone().to(pm.device).requires_grad_(True)
        nll, _ = pm.example_nll(leaf[None], batch_of(enc, list(range(len(enc))), pm.pad_id, pm.is_seq2seq))
        (nll.sum() / max(sum(len(t) for t in enc.targets), 1)).backward()
        out[name] = -leaf.grad.detach().float().cpu()
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors taken as flat vectors (0 when either is zero)."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def run_inspect(cfg: InspectConfig, model=None, tokenizer=None) -> dict:
    """Print the report of a source run (and draw it); returns what it printed, as numbers."""
    cfg.validate()
    run = Path(cfg.run_dir).expanduser()
    particles, meta = load_posterior(run)
    names = list(meta.get("source_tasks") or [])
    matrix, logged = interference_matrix(run)
    losses = particle_task_losses(run)
    report = {"run": str(run), "source_tasks": names, "interference": matrix, "interference_steps": logged,
              "particle_task_loss": losses, "favours": favoured(losses, names) if losses else None}
    if cfg.target:
        report["target"] = cfg.target
        report["alignment"] = target_alignment(cfg, run, particles, meta, model, tokenizer)
    print(render(report))
    if cfg.plots:
        report["png"] = str(draw(report, Path(cfg.png).expanduser() if cfg.png else run / "inspect.png"))
        print(f"drew {report['png']}")
    return report


def target_alignment(cfg: InspectConfig, run: Path, particles: torch.Tensor, meta: dict, model, tokenizer
                     ) -> dict[str, float]:
    """{source: cosine of its score with the target's}, at the particles' mean."""
    from types import SimpleNamespace

    from .prompted import PromptedModel
    from .runs import check_data_dir, load_model, load_split, resolve_device
    from .tasks import get_task

    hp = meta.get("hyperparameters", {})
    data_dir = cfg.data_dir if cfg.data_dir is not None else hp.get("data_dir")
    check_data_dir(data_dir)
    target = get_task(cfg.target)
    files = meta.get("source_task_files") or [None] * len(meta["source_tasks"])
    sources = [get_task(f or n) for n, f in zip(meta["source_tasks"], files)]
    split_cfg = SimpleNamespace(data_dir=data_dir, seed=hp.get("seed", 0))
    samples = {t.name: (t, load_split(t, "train", split_cfg, cfg.examples)) for t in [*sources, target]}
    if model is None:
        opts = SimpleNamespace(model=cfg.model or meta["backbone"], trust_remote_code=cfg.trust_remote_code,
                               progress=cfg.progress)
        model, tokenizer = load_model(opts, resolve_device(cfg.device))
    pm = PromptedModel(model, tokenizer, hp.get("precision", "fp32"), hp.get("max_input_tokens", 256),
                       verbalizers=hp.get("verbalizers", "auto"))
    scores = score_alignment(pm, particles.mean(0), samples, hp.get("max_target_tokens", 32))
    return {s.name: round(cosine(scores[target.name], scores[s.name]), 6) for s in sources}


def render(report: dict) -> str:
    """The report as markdown tables."""
    names = report["source_tasks"]
    lines = [f"# {report['run']}", ""]
    if report["interference"] is None:
        lines += ["No task-interference records in this run's log (an independent run, a single task, fewer steps "
                  "than --interference-every, or --interference-every 0)."]
    else:
        lines += [f"## Task interference (mean over {report['interference_steps']} logged steps: cosine of the "
                  "tasks' score directions; > 0 helps, < 0 conflicts)", "",
                  "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {a} | " + " | ".join(f"{x:+.3f}" for x in row) + " |"
                  for a, row in zip(names, report["interference"])]
    if report["particle_task_loss"]:
        lines += ["", "## Per-particle task losses (last logged step; mean token NLL) and the tasks each favours", "",
                  "| particle | " + " | ".join(names) + " | favours |", "|---|" + "---|" * (len(names) + 1)]
        lines += [f"| {m} | " + " | ".join(f"{x:.3f}" for x in row) + f" | {', '.join(fav) or '—'} |"
                  for m, (row, fav) in enumerate(zip(report["particle_task_loss"], report["favours"]))]
    if "alignment" in report:
        lines += ["", f"## How much each source should help {report['target']} (cosine of the target's score with "
                  "the source's, at the particles' mean; first-order estimate)", "", "| source | alignment |",
                  "|---|---|"]
        lines += [f"| {s} | {a:+.3f} |" for s, a in sorted(report["alignment"].items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"


def draw(report: dict, path: Path) -> Path:
    """inspect.png: the interference heatmap, and the per-particle task losses as grouped bars."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise BmtptError("drawing needs matplotlib (pip install matplotlib), or pass --no-plots") from e
    names = report["source_tasks"]
    losses = report["particle_task_loss"]
    align = report.get("alignment")
    inter = report["interference"]
    panels = bool(inter) + bool(losses) + bool(align)
    if not panels:
        raise BmtptError("nothing to draw: the run logged no interference or task losses (pass --no-plots)")
    fig = Figure(figsize=(5 * panels, 4))
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    if inter:
        ax = axes.pop(0)
        im = ax.imshow(inter, cmap="RdBu", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        for i, row in enumerate(inter):
            for j, x in enumerate(row):
                ax.text(j, i, f"{x:+.2f}", ha="center", va="center", fontsize=8)
        ax.set_title("task interference (cosine of scores)")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if losses:
        ax = axes.pop(0)
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            ax.bar([m + k * width for m in range(len(losses))], [row[k] for row in losses], width, label=name)
        ax.set_xticks([m + 0.4 - width / 2 for m in range(len(losses))], [f"particle {m}" for m in range(len(losses))])
        ax.set_ylabel("mean token NLL")
        ax.set_title("per-particle task losses (last logged step)")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(names))
    if align:
        ax = axes.pop(0)
        order = sorted(align, key=lambda n: -align[n])
        ax.barh(order[::-1], [align[n] for n in order[::-1]], color=["C0" if align[n] >= 0 else "C3"
                                                                      for n in order[::-1]])
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlim(-1, 1)
        ax.set_title(f"alignment with {report['target']}'s score")
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.25, top=0.9, wspace=0.35)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _log(run_dir: Path) -> list[dict]:
    if not (run_dir / "metrics.jsonl").is_file():
        raise BmtptError(f"{run_dir} holds no metrics.jsonl")
    return read_jsonl_log(run_dir / "metrics.jsonl")


__all__ = ["InspectConfig", "cosine", "favoured", "interference_matrix", "run_inspect", "score_alignment",
           "task_interference"]
