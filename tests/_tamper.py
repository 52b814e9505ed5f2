"""Ways to alter a real bundle the way an attacker or a broken tool would, for the integrity tests.

Each helper edits a copied bundle on disk and, where the attack is "hashes still valid", re-hashes the
files it changed in ``manifest.json`` — so the bundle passes every file hash and only the defence
under test can catch it.
"""

from __future__ import annotations

import json
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fusionedge.sdk.bundle import sha256_file


def edit_manifest(root: Path, edit: Callable[[dict], Any]) -> dict:
    """Apply ``edit`` to the parsed ``manifest.json`` and write it back; returns the new manifest."""
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))
    return manifest


def rehash(root: Path, *rels: str) -> None:
    """Record the current size and SHA-256 of ``rels`` in the manifest's ``files``."""

    def edit(manifest: dict) -> None:
        for rel in rels:
            manifest["files"][rel] = {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}

    edit_manifest(root, edit)


def poison_initializer(root: Path, name: str, value: float = float("nan")) -> None:
    """Set every element of the ONNX initializer ``name`` to ``value`` and re-hash ``model.onnx``."""
    import onnx
    from onnx import numpy_helper

    path = root / "model.onnx"
    model = onnx.load(str(path))
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            arr = numpy_helper.to_array(init).copy()
            arr[...] = value
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, name))
            break
    else:
        raise KeyError(name)
    onnx.save(model, str(path))
    rehash(root, "model.onnx")


def externalize(model_in: Path, model_out: Path, location: str) -> None:
    """Save ``model_in`` as ``model_out`` with its larger initializers (weights) in the external-data file ``location``."""
    import onnx

    model = onnx.load(str(model_in))
    onnx.save(model, str(model_out), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=1024)


def write_clip(folder: Path, *, frames: int = 6, size: tuple[int, int] = (96, 64)) -> tuple[Path, Path]:
    """A short MJPG clip and a mono WAV beside it; returns ``(video, audio)``."""
    folder.mkdir(parents=True, exist_ok=True)
    video, audio = folder / "clip.avi", folder / "clip.wav"
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, size)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000.0) * 32767).astype("<i2")
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(samples.tobytes())
    return video, audio


def write_dataset(folder: Path, n: int = 2) -> Path:
    """A labelled data-set folder of ``n`` copies of one clip; returns the folder."""
    video, audio = write_clip(folder / "media")
    lines = [json.dumps({"id": str(i), "video": f"media/{video.name}", "audio": f"media/{audio.name}",
                         "event": "none", "audio_tags": [], "boxes": []}) for i in range(n)]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder
