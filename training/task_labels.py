"""The label vocabularies a training run learns: the user's task, not only the generator's.

A run learns the events, audio tags and object classes of its data. They come, in this order of
precedence, from a file given with ``TrainConfig(labels=FILE)`` (``fusionedge train --labels``),
from a ``labels.json`` beside the training manifest, or from the training manifest itself (every
label it uses, sorted, so the same data always gives the same class indices). A labels file is
``{"events": [...], "audio_tags": [...], "objects": [...]}``, each a list of distinct labels in the
order the model's outputs take. An empty vocabulary (``[]`` in the file, or a kind the manifest never
uses) is a task without that head: no such output, loss or metric; at least one kind must be there. Data whose labels all belong to the synthetic
generator's vocabularies (``sdk.spec``) is trained with exactly those vocabularies, in their order,
so a run on generated data is the same run it always was. The counts per label of the decoded
splits are printed and recorded in ``metrics.json`` so a missing or rare class shows before the
metrics do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fusionedge.sdk.datamanifest import manifest_path, read_manifest
from fusionedge.sdk.errors import DataError
from fusionedge.sdk.fileio import read_json

from .dataset import ClipCache, Labels

__all__ = ["LABELS_FILE", "LABEL_KINDS", "TaskLabels", "collect_labels", "format_label_counts", "label_counts",
           "read_labels_file", "resolve_labels"]

#: The file looked for beside the training manifest.
LABELS_FILE = "labels.json"
#: The three vocabularies, in the order a labels file and ``Labels.to_dict()`` list them.
LABEL_KINDS = ("events", "audio_tags", "objects")
_SINGULAR = {"events": "event", "audio_tags": "audio tag", "objects": "object class"}


@dataclass(frozen=True)
class TaskLabels:
    """The vocabularies of a run and where they came from."""

    labels: Labels
    source: str  # "file" (--labels), "labels.json" (beside the manifest), "manifest" or "generator"
    path: Path | None = None  # the labels file, or the manifest the labels were collected from

    def to_dict(self) -> dict:
        """``{"source", "path"}`` as ``metrics.json`` records them."""
        return {"source": self.source, "path": None if self.path is None else str(self.path)}


def read_labels_file(path: str | os.PathLike) -> Labels:
    """Read a labels file ``{"events": [...], "audio_tags": [...], "objects": [...]}``.

    Raises:
        DataError: the file is missing, not bounded JSON, lacks a vocabulary or has another key,
            or a vocabulary is not a list, lists a label twice or holds something other than a
            non-empty string, or all three are empty. The message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    doc = read_json(path, what=str(path), error=DataError)
    if not isinstance(doc, dict):
        raise DataError(f"{path}: a labels file is a JSON object with keys {', '.join(LABEL_KINDS)}")
    unknown = sorted(set(doc) - set(LABEL_KINDS))
    if unknown:
        raise DataError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))} "
                        f"(a labels file has {', '.join(LABEL_KINDS)})")
    vocab: dict[str, tuple[str, ...]] = {}
    for kind in LABEL_KINDS:
        names = doc.get(kind)
        if not isinstance(names, list):
            raise DataError(f"{path}: {kind!r} must be a list of labels ([] for a task without that head)")
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise DataError(f"{path}: {kind!r} holds {bad[0]!r}; labels are non-empty strings")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DataError(f"{path}: {kind!r} lists {', '.join(map(repr, twice))} more than once")
        vocab[kind] = tuple(names)
    if not any(vocab.values()):
        raise DataError(f"{path}: every vocabulary is empty; a task needs events, audio tags or objects")
    return Labels(**vocab)


def collect_labels(samples: Sequence, where: str | os.PathLike) -> Labels:
    """The vocabularies the samples use: the generator's when every label is one of its, else sorted.

    Args:
        samples: manifest samples (read with ``events=None, audio_tags=None, objects=None``).
        where: the manifest, named in the error.

    A kind the data never uses (no labelled event, no audio tag or no box) gets an empty
    vocabulary: the task has no such head.

    Raises:
        DataError: the data uses no label at all.
    """
    used: dict[str, set[str]] = {kind: set() for kind in LABEL_KINDS}
    for s in samples:
        if s.event is not None:
            used["events"].add(s.event)
        used["audio_tags"].update(s.audio_tags)
        used["objects"].update(b.label for b in s.boxes)
    if not any(used.values()):
        raise DataError(f"{where}: no sample has any {', '.join(_SINGULAR[k] for k in LABEL_KINDS)} label; "
                        f"label the data, or list the vocabularies in a {LABELS_FILE} beside the manifest "
                        "(or --labels FILE)")
    generator = Labels()
    if all(used[kind] <= set(getattr(generator, kind)) for kind in LABEL_KINDS):
        return generator
    return Labels(**{kind: tuple(sorted(used[kind])) for kind in LABEL_KINDS})


def resolve_labels(data: str | os.PathLike, labels_file: str | os.PathLike | None = None) -> TaskLabels:
    """The vocabularies a run on ``data`` learns (see the module docstring for the precedence).

    Args:
        data: the training manifest, or its folder.
        labels_file: an explicit labels file (``--labels``), or None.

    Raises:
        DataError: the labels file is invalid, or the manifest is missing or invalid, or it uses
            no label of some kind (see :func:`collect_labels`). Whether the data's labels belong
            to a file's vocabularies is checked where the manifests are read for training.
    """
    if labels_file is not None:
        return TaskLabels(read_labels_file(labels_file), "file", Path(labels_file))
    manifest = manifest_path(data)
    beside = manifest.parent / LABELS_FILE
    if beside.is_file():
        return TaskLabels(read_labels_file(beside), LABELS_FILE, beside)
    samples = read_manifest(manifest, require_labels=False, check_files=False,
                            events=None, audio_tags=None, objects=None)
    labels = collect_labels(samples, manifest)
    return TaskLabels(labels, "generator" if labels == Labels() else "manifest", manifest)


def label_counts(clips: ClipCache) -> dict[str, dict[str, int]]:
    """Samples per event, clips per audio tag and boxes per object class of a decoded split.

    Every label of the vocabularies is listed, with 0 where the split never uses it.
    """
    labels = clips.labels
    events = [0] * len(labels.events)
    for k in clips.event.tolist():
        if 0 <= k < len(events):  # IGNORE_INDEX: an unlabelled clip
            events[k] += 1
    tags = clips.audio_tags.sum(dim=0).round().long().tolist() if len(clips) else [0] * len(labels.audio_tags)
    objects = [0] * len(labels.objects)
    for box_labels in clips.box_labels:
        for k in box_labels.tolist():
            objects[k] += 1
    return {"events": dict(zip(labels.events, events)), "audio_tags": dict(zip(labels.audio_tags, tags)),
            "objects": dict(zip(labels.objects, objects))}


def format_label_counts(task: TaskLabels, counts: dict[str, dict[str, dict[str, int]]]) -> str:
    """The summary a run prints: where the vocabularies came from, then ``label train/val`` per kind."""
    where = "" if task.path is None else f" ({task.path})"
    lines = [f"labels from {task.source}{where}:"]
    for kind in LABEL_KINDS:
        names = counts["train"][kind]
        cells = ", ".join(f"{n} {counts['train'][kind][n]}/{counts['val'][kind][n]}" for n in names)
        lines.append(f"  {kind} ({len(names)}; train/val): {cells or 'none: the task has no such head'}")
    return "\n".join(lines)
