"""COCO detection JSON → manifest samples: still images as short clips, COCO-VID frames as clip windows.

A COCO file lists ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``id``, ``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``) and ``categories`` (``id``,
``name``). An image without ``video_id`` becomes one clip: the image repeated for ``still_seconds``.
Images that carry ``video_id`` (and ``frame_id``, COCO-VID style) are ordered per video and cut into
windows of ``clip_frames`` frames every ``stride`` frames. A sample's boxes are the annotations of
its last frame, in ``[x1, y1, x2, y2]`` pixels cut to the image, labelled with the category name.
Crowd annotations (``iscrowd: 1``) mark regions to ignore, not objects, and are left out.

The file is read with :func:`fusionedge.sdk.fileio.read_json` (bounded depth and integer length,
up to :data:`COCO_MAX_BYTES`); every row that cannot be imported is named by its annotation, image
or category id.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from fusionedge.sdk.datamanifest import Box
from fusionedge.sdk.errors import DataError
from fusionedge.sdk.fileio import read_json

from .common import Planned, Refusal, clip_box, read_image, safe_id, write_video

__all__ = ["COCO_MAX_BYTES", "plan_coco"]

#: Largest COCO file read (the COCO 2017 training annotations are about 450 MB).
COCO_MAX_BYTES = 2 * 1024**3


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _categories(src: Path, doc: dict, refused: list[Refusal]) -> dict[int, str]:
    names: dict[int, str] = {}
    for k, c in enumerate(doc.get("categories") or []):
        cid = _int(c.get("id")) if isinstance(c, dict) else None
        name = c.get("name") if isinstance(c, dict) else None
        if cid is None or not isinstance(name, str) or not name:
            refused.append(Refusal(f"{src}: categories[{k}]", "needs an integer 'id' and a non-empty 'name'"))
        elif cid in names:
            refused.append(Refusal(f"{src}: category id {cid}", "listed twice"))
        else:
            names[cid] = name
    return names


def _images(src: Path, doc: dict, root: Path, refused: list[Refusal]) -> dict[int, dict]:
    images: dict[int, dict] = {}
    for k, im in enumerate(doc.get("images") or []):
        iid = _int(im.get("id")) if isinstance(im, dict) else None
        if iid is None:
            refused.append(Refusal(f"{src}: images[{k}]", "needs an integer 'id'"))
            continue
        where = f"{src}: image id {iid}"
        name, w, h = im.get("file_name"), _int(im.get("width")), _int(im.get("height"))
        if iid in images:
            refused.append(Refusal(where, "listed twice"))
        elif not isinstance(name, str) or not name:
            refused.append(Refusal(where, "needs a 'file_name'"))
        elif w is None or h is None or w <= 0 or h <= 0:
            refused.append(Refusal(where, "needs positive integer 'width' and 'height'"))
        elif not (root / name).is_file():
            refused.append(Refusal(where, f"file not found: {root / name}"))
        else:
            images[iid] = {**im, "path": root / name}
    return images


def _annotations(src: Path, doc: dict, images: dict[int, dict], names: dict[int, str],
                 known_images: set[int], refused: list[Refusal]) -> dict[int, list[Box]]:
    boxes: dict[int, list[Box]] = defaultdict(list)
    for k, a in enumerate(doc.get("annotations") or []):
        aid = _int(a.get("id")) if isinstance(a, dict) else None
        where = f"{src}: annotation id {aid}" if aid is not None else f"{src}: annotations[{k}]"
        if not isinstance(a, dict):
            refused.append(Refusal(where, "must be an object"))
            continue
        iid, cid, bbox = _int(a.get("image_id")), _int(a.get("category_id")), a.get("bbox")
        if iid is None or iid not in known_images:
            refused.append(Refusal(where, f"image_id {a.get('image_id')!r} is not in 'images'"))
        elif cid is None or cid not in names:
            refused.append(Refusal(where, f"category_id {a.get('category_id')!r} is not in 'categories'"))
        elif (not isinstance(bbox, list) or len(bbox) != 4 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in bbox)
              or bbox[2] <= 0 or bbox[3] <= 0):
            refused.append(Refusal(where, f"bbox must be [x, y, w, h] with w, h > 0, got {bbox!r}"))
        elif a.get("iscrowd") == 1 or iid not in images:
            continue  # an ignore region, or an image refused on its own
        else:
            im = images[iid]
            x, y, w, h = (float(v) for v in bbox)
            cut = clip_box(x, y, x + w, y + h, im["width"], im["height"])
            if cut is not None:
                boxes[iid].append(Box(names[cid], *cut))
    return boxes


def _still(im: dict, frames: int, fps: float, sid: str):
    def make(media: Path) -> tuple[Path, Path | None]:
        rgb = read_image(im["path"])
        video = media / f"{sid}.mp4"
        write_video(video, (rgb for _ in range(frames)), fps)
        return video, None
    return make


def _window(ims: list[dict], fps: float, sid: str):
    def make(media: Path) -> tuple[Path, Path | None]:
        video = media / f"{sid}.mp4"
        write_video(video, (read_image(im["path"]) for im in ims), fps)
        return video, None
    return make


def plan_coco(src: str | Path, *, media_dir: str | Path | None = None, fps: float = 10.0,
              clip_frames: int = 8, stride: int | None = None,
              still_seconds: float = 1.0) -> tuple[list[Planned], list[Refusal]]:
    """Read a COCO detection file and plan its samples (nothing is written).

    Args:
        src: the COCO JSON file.
        media_dir: the folder ``file_name`` is relative to (default: the JSON file's folder).
        fps: frame rate of the written clips.
        clip_frames: frames per window of a COCO-VID video.
        stride: frames between window starts (default: ``clip_frames``, windows that do not overlap).
        still_seconds: length of the clip a still image becomes.

    Returns:
        The planned samples and the refused rows.

    Raises:
        DataError: the file is not COCO JSON (too large, not an object, no ``images`` list).
    """
    src = Path(src)
    doc = read_json(src, max_bytes=COCO_MAX_BYTES, error=DataError)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{src}: not a COCO detection file (an object with an 'images' list)")
    for key in ("annotations", "categories"):
        if key in doc and not isinstance(doc[key], list):
            raise DataError(f"{src}: '{key}' must be a list")
    root = Path(media_dir) if media_dir is not None else src.parent
    refused: list[Refusal] = []
    names = _categories(src, doc, refused)
    images = _images(src, doc, root, refused)
    known = {im.get("id") for im in doc["images"] if isinstance(im, dict)}
    boxes = _annotations(src, doc, images, names, known, refused)
    stride = stride or clip_frames
    planned: list[Planned] = []
    videos: dict[Any, list[dict]] = defaultdict(list)
    for iid, im in images.items():
        if im.get("video_id") is not None:
            videos[im["video_id"]].append(im)
            continue
        sid = f"{safe_id(Path(im['file_name']).stem)}-{iid}"
        planned.append(Planned(sid, _still(im, max(1, round(still_seconds * fps)), fps, sid),
                               boxes=tuple(boxes.get(iid, ())), width=im["width"], height=im["height"],
                               meta={"source": im["file_name"]}))
    video_names = {v.get("id"): v.get("name") for v in doc.get("videos") or [] if isinstance(v, dict)}
    for vid, ims in videos.items():
        ims.sort(key=lambda im: (im.get("frame_id", 0), im["id"]))
        prefix = safe_id(str(video_names.get(vid) or f"video{vid}"))
        lasts = range(min(clip_frames, len(ims)) - 1, len(ims), stride)
        for last in lasts:
            window = ims[max(0, last - clip_frames + 1): last + 1]
            im = window[-1]
            sid = f"{prefix}-{im.get('frame_id', last)}"
            planned.append(Planned(sid, _window(window, fps, sid), boxes=tuple(boxes.get(im["id"], ())),
                                   width=im["width"], height=im["height"],
                                   meta={"source": im["file_name"]}))
    return planned, refused
