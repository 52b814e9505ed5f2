"""A training run's report: ``write_run_report(run_dir)`` → ``curves.png`` and ``summary.md``.

Reads ``run_dir/metrics.json`` (and ``config.json`` when present), both written by ``train()``:

- ``curves.png``: per epoch, train and validation loss (the train loss is what was back-propagated:
  with the alternating schedule, one task group's loss per step), validation event accuracy, detection
  mAP@0.5 and audio-tag mAP, and for ``task_weighting="uncertainty"`` runs the learned task
  weights ``exp(-s)``. matplotlib (Agg backend) is imported only here, lazily.
- ``summary.md``: the configuration essentials, the best epoch's metrics, the time taken and,
  for distillation runs, the teacher's and the student's FLOPs and parameters.
"""

from __future__ import annotations

import math
from pathlib import Path

from fusionedge.sdk.errors import DataError
from fusionedge.sdk.fileio import read_json, write_text_atomic

__all__ = ["write_run_report"]

_METRICS = (("event_accuracy", "event accuracy"), ("event_macro_f1", "event macro-F1"),
            ("audio_tag_map", "audio-tag mAP"), ("detection_map50", "detection mAP@0.5"), ("loss", "val loss"))


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _plot(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    hist = metrics["history"]
    epochs = [h["epoch"] for h in hist]
    weights = [h.get("task_weights") for h in hist]
    has_weights = any(w for w in weights)
    panels = 4 if has_weights else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), constrained_layout=True)
    ax = axes[0]
    ax.plot(epochs, [_num(h["train"].get("loss")) for h in hist], "o-", label="train")
    ax.plot(epochs, [_num(h["val"].get("loss")) for h in hist], "s-", label="val")
    ax.set(title="loss", xlabel="epoch")
    ax.legend()
    ax = axes[1]
    ax.plot(epochs, [_num(h["val"].get("event_accuracy")) for h in hist], "o-", label="event accuracy")
    ax.set(title="validation event accuracy", xlabel="epoch", ylim=(0, 1))
    ax = axes[2]
    ax.plot(epochs, [_num(h["val"].get("detection_map50")) for h in hist], "o-", label="det mAP@0.5")
    ax.plot(epochs, [_num(h["val"].get("audio_tag_map")) for h in hist], "s-", label="tag mAP")
    ax.set(title="validation mAP", xlabel="epoch", ylim=(0, 1))
    ax.legend()
    if has_weights:
        ax = axes[3]
        names = sorted({k for w in weights if w for k in w})
        for name in names:
            ax.plot(epochs, [_num((w or {}).get(name)) for w in weights], "o-", label=name)
        ax.set(title="task weights exp(-s)", xlabel="epoch")
        ax.legend()
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(Path(metrics.get("run_dir", path.parent)).name)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(metrics: dict, config: dict) -> str:
    train_cfg = config.get("train", {})
    lines = [f"# Run `{Path(metrics.get('run_dir', '')).name}`", ""]
    lines += ["## Configuration", "", "| option | value |", "|---|---|"]
    essentials = {"model": config.get("model_name", train_cfg.get("model"))}
    for k in ("data", "val_data", "epochs", "batch_size", "lr", "seed", "task_weighting", "task_schedule",
              "teacher", "init", "max_train_samples"):
        if k in train_cfg:
            essentials[k] = train_cfg[k]
    for k in ("task_weighting", "task_schedule"):
        essentials.setdefault(k, metrics.get(k))
    essentials["world size"] = config.get("world_size", metrics.get("distributed", {}).get("world_size", 1))
    essentials["train / val samples"] = f"{metrics.get('train_samples')} / {metrics.get('val_samples')}"
    lines += [f"| {k} | {_fmt(v, '.4g')} |" for k, v in essentials.items() if v is not None]
    best = metrics.get("best")
    lines += ["", "## Best epoch", ""]
    if best:
        lines += [f"Epoch {best.get('epoch')} of {len(metrics.get('history', []))}.", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {label} | {_fmt(best.get(k))} |" for k, label in _METRICS]
    else:
        lines.append("No epoch was completed.")
    last = (metrics.get("history") or [{}])[-1]
    if last.get("task_weights"):
        lines += ["", "## Learned task weights (last epoch)", "", "| group | exp(-s) |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in last["task_weights"].items()]
    lines += ["", "## Time", "", f"- total: {_fmt(metrics.get('seconds'), '.1f')} s "
              f"(decoding the data: {_fmt(metrics.get('data_seconds'), '.1f')} s)"]
    epoch_s = [h.get("seconds") for h in metrics.get("history", []) if h.get("seconds") is not None]
    if epoch_s:
        lines.append(f"- per epoch: {sum(epoch_s) / len(epoch_s):.1f} s on average")
    d = metrics.get("distillation")
    if d:
        lines += ["", "## Distillation", "", f"Teacher `{d.get('teacher_model')}` ({d.get('teacher')}).", "",
                  "| | teacher | student | ratio |", "|---|---|---|---|",
                  f"| FLOPs | {d.get('teacher_flops'):,} | {d.get('student_flops'):,} | {_fmt(d.get('flops_ratio'))} |",
                  f"| params | {d.get('teacher_params'):,} | {d.get('student_params'):,} | "
                  f"{_fmt(d.get('params_ratio'))} |"]
        if d.get("weights"):
            lines += ["", "Weights: " + ", ".join(f"{k}={v}" for k, v in d["weights"].items())]
        if d.get("cache_seconds") is not None:
            lines.append(f"Teacher targets computed in {d['cache_seconds']} s.")
    init = metrics.get("init")
    if init:
        lines += ["", "## Initialization", "", f"{init.get('kind')} checkpoint {init.get('path')}: "
                  f"{init.get('loaded_keys')} tensors loaded."]
    return "\n".join(lines) + "\n"


def write_run_report(run_dir: Path) -> tuple[Path, Path]:
    """Write ``curves.png`` and ``summary.md`` into a run folder.

    Args:
        run_dir: a folder written by ``train()`` (holds ``metrics.json``).

    Raises:
        DataError: no readable ``metrics.json``, or one without a history.
        ImportError: matplotlib is not installed (``pip install 'fusionedge[train]'``); the
            Markdown summary is still written first.

    Returns:
        ``(curves_png, summary_md)``.
    """
    run_dir = Path(run_dir)
    try:
        metrics = read_json(run_dir / "metrics.json")
    except (OSError, ValueError) as e:
        raise DataError(f"{run_dir}: no readable metrics.json ({e})") from e
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history"), list):
        raise DataError(f"{run_dir / 'metrics.json'}: not a training run's metrics (no history)")
    try:
        config = read_json(run_dir / "config.json")
    except (OSError, ValueError):
        config = {}
    md = run_dir / "summary.md"
    write_text_atomic(md, _markdown(metrics, config))
    png = run_dir / "curves.png"
    _plot(metrics, png)
    return png, md
