"""How every verb's ``--help`` reads: each option's default shown, an example per verb.

:class:`Parser` is the ``ArgumentParser`` of the whole command; its sub-parsers inherit it, so every
verb's help goes through :class:`HelpFormatter`, which appends ``(default: X)`` to an option whose
help does not already state its default (a flag, or an option whose default is "not given", shows
none), and keeps the indented example lines of an epilog as they are written. :data:`EXAMPLES`
holds one or more example command lines per verb; :func:`add_examples` turns them into each
parser's epilog. Nothing here imports more than the standard library.
"""

from __future__ import annotations

import argparse
import os
import re
import textwrap
from collections.abc import Iterator
from typing import Any

__all__ = ["EXAMPLES", "HelpFormatter", "Parser", "add_examples", "sub_verbs", "walk_parsers"]

#: Verb path (as typed after ``fusionedge``) -> example command lines shown under ``examples:``.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": ("fusionedge quickstart --workdir qs", "fusionedge doctor"),
    "data": ("fusionedge data synth --out data/train --samples 2000",),
    "data synth": ("fusionedge data synth --out data/train --samples 2000 --seed 0",
                   "fusionedge data synth --out data/pool --samples 5000 --cue-agreement 0.9"),
    "data questions": ("fusionedge data questions data/test --out data/test/manifest.jsonl",
                       "fusionedge data questions data/train --out data/train/questions.jsonl --draws 2"),
    "data outside": ("fusionedge data outside --out data/outside --samples-per-kind 4",),
    "data import": ("fusionedge data import --format coco annotations/instances_val.json --out data/coco",
                    "fusionedge data import --format mot MOT17/train/MOT17-02 --out data/mot --clip-frames 8",
                    "fusionedge data import --format csv ESC-50/meta/esc50.csv --media-dir ESC-50/audio "
                    "--out data/esc --json",
                    "fusionedge data import --format folders clips/ --out data/mine"),
    "data check": ("fusionedge data check data/mine", "fusionedge data check data/mine --json"),
    "train": ("fusionedge train --data data/train --val data/val --out runs/student --epochs 10",),
    "pretrain": ("fusionedge pretrain --data data/pool --out runs/pretrain",
                 "fusionedge train --data data/train --init runs/pretrain/pretrain.pt --out runs/ft"),
    "distill": ("fusionedge distill --data data/train --teacher runs/teacher/best.pt --out runs/student",),
    "report": ("fusionedge report --workdir work --only fusion",),
    "report open-world": ("fusionedge report open-world --bundle old/bundle --bundle new/bundle --test data/test "
                          "--outside data/outside --out open-world",),
    "export": ("fusionedge export --checkpoint runs/student/best.pt --out bundle",),
    "import": ("fusionedge import --onnx yolov8n.onnx --task detect --preset yolov8 --labels coco.txt --out det",
               "fusionedge import --onnx net.onnx --task classify --labels classes.txt --out cls "
               "--input image:size=224x224,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225",
               "fusionedge import --onnx kws.onnx --task audio-classify --labels words.txt --out kws "
               "--input wave:modality=audio,sample_rate=16000,seconds=1"),
    "eval": ("fusionedge eval --bundle bundle --data data/test --json",),
    "calibrate": ("fusionedge calibrate --bundle bundle --data data/val",
                  "fusionedge calibrate --bundle bundle --data data/val --target-ood-rate 0.02 --json"),
    "predict": ("fusionedge predict --bundle bundle --video clip.mp4 --audio clip.wav --out annotated.mp4",),
    "ask": ("fusionedge ask --bundle bundle --video clip.mp4 --audio clip.wav \"is a siren heard?\"",
            "fusionedge ask --bundle bundle --video clip.mp4 --top-k 5 --json \"how many cars are ahead?\""),
    "qa": ("fusionedge qa train --checkpoint runs/student/best.pt --data data/train --val data/val --out runs/qa",
           "fusionedge qa export --bundle bundle --checkpoint runs/qa/best.pt --calibrate-on data/val"),
    "qa finetune-detection": (("fusionedge qa finetune-detection --checkpoint runs/student/best.pt "
                               "--data data/train --val data/val --out runs/qa-det"),),
    "qa train": ("fusionedge qa train --checkpoint runs/student/best.pt --data data/train --val data/val "
                 "--out runs/qa",),
    "qa export": ("fusionedge qa export --bundle bundle --checkpoint runs/qa/best.pt --calibrate-on data/val",),
    "qa report": ("fusionedge qa report --bundle bundle --data data/test --train-data data/train --out qa.md",),
    "explain": ("fusionedge explain --bundle bundle --video clip.mp4 --audio clip.wav --out explain.png",
                "fusionedge explain --bundle bundle --data data/test --out explain-report"),
    "quickstart": ("fusionedge quickstart --workdir qs",
                   "fusionedge quickstart --workdir qs12k --train-samples 12000 --epochs 8"),
    "run": ("fusionedge run --bundle bundle --video /dev/video0 --audio mic://default --events events.jsonl",
            "fusionedge run --bundle bundle --video clip.mp4 --audio clip.wav --fast --json",
            "fusionedge run --bundle bundle --source front=/dev/video0 --source rear=/dev/video1 "
            "--mic cabin=mic://default --hears front,rear --track --events events.jsonl --out annotated/",
            ("fusionedge run --bundle bundle --video clip.mp4 --events events.jsonl --ask \"is a siren heard?\" "
             "--ask-every 10"),
            "fusionedge run --config /etc/fusionedge/run.toml"),
    "quantize": ("fusionedge quantize --bundle bundle --out bundle-int8 --data data/val --validation data/test",),
    "fp16": ("fusionedge fp16 --bundle bundle --out bundle-fp16",),
    "compress": ("fusionedge compress --checkpoint runs/student/best.pt --data data --out compressed "
                 "--prune 0.4 --int8 ptq",
                 "fusionedge compress --checkpoint runs/student/best.pt --data data --out compressed "
                 "--prune 0.4 --keep-narrow --ratio-scale det_head=1.5 --w-det-feature 1 --epochs 24 --lr 1e-3 "
                 "--int8 ptq",
                 "fusionedge compress --checkpoint runs/student/best.pt --data data --out sparse --sparsity 2:4"),
    "track": ("fusionedge track sequences --out seqs --count 4",),
    "track sequences": ("fusionedge track sequences --out seqs --count 4 --seconds 12 --fps 8",),
    "track eval": ("fusionedge track eval --bundle bundle --data seqs --out tracks",),
    "engine": ("fusionedge engine build --bundle bundle",),
    "engine build": ("fusionedge engine build --bundle bundle --workspace-mib 2048",),
    "engine check": ("fusionedge engine check --bundle bundle",),
    "compare": ("fusionedge compare --bundle bundle --backends onnxruntime,tensorrt --variant bundle-int8",),
    "bench": ("fusionedge bench --bundle bundle --out bench --duration 10",
              "fusionedge bench compare old/results.json new/results.json"),
    "bench compare": ("fusionedge bench compare old/results.json new/results.json --threshold 0.05",),
    "bench cameras": ("fusionedge bench cameras --bundle bundle --cameras 1,2,3 --audio --repeats 3 --report cams.md",),
    "fleet": ("fusionedge fleet init repo", "fusionedge fleet status repo"),
    "fleet init": ("fusionedge fleet init repo --threshold root=2 --key-count root=3",),
    "fleet publish": ("fusionedge fleet publish repo bundle --model student --version 1.2.0 --device-class x86-cpu",),
    "fleet rollout": ("fusionedge fleet rollout repo --model student --version 1.2.0 --percent 10 --cohort canary",),
    "fleet timestamp": ("fusionedge fleet timestamp repo",),
    "fleet resign": ("fusionedge fleet resign repo --role targets",),
    "fleet rotate-key": ("fusionedge fleet rotate-key repo --role snapshot",),
    "fleet status": ("fusionedge fleet status repo --json",),
    "fleet serve": ("fusionedge fleet serve repo --port 8000",),
    "fleet agent": (("fusionedge fleet agent --url https://updates.example.com --device-id cam-17 "
                     "--state-dir /var/lib/fusionedge --device-class jetson-orin --model student --interval 600"),
                    "fusionedge fleet agent --config /etc/fusionedge/agent.toml --once"),
    "fleet watch": ("fusionedge fleet watch --broker mqtt.example.com:1883 --repo repo --model student",),
    "doctor": ("fusionedge doctor", "fusionedge doctor --need tensorrt --need gstreamer --json",
               "fusionedge doctor --mqtt 127.0.0.1:1883"),
    "completion": ("fusionedge completion bash > ~/.local/share/bash-completion/completions/fusionedge",
                   "fusionedge completion zsh > ~/.zfunc/_fusionedge"),
}

_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                 argparse._AppendConstAction, argparse._CountAction, argparse._HelpAction,
                 argparse._VersionAction)
_STATES_DEFAULT = re.compile(r"\bdefault\b|%\(default\)", re.IGNORECASE)


def _show(value: Any) -> str:
    """A default as a user would type it: ``onnxruntime,tensorrt`` rather than a Python list."""
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


class HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help; keeps indented lines of a description or epilog."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or isinstance(action, _FLAG_ACTIONS) or default is None
                or default is argparse.SUPPRESS or _STATES_DEFAULT.search(text)):
            return text
        return f"{text} (default: {_show(default).replace('%', '%%')})"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for paragraph in text.split("\n"):
            if paragraph.startswith(" ") or not paragraph:
                out.append(indent + paragraph)
            else:
                out.append(textwrap.fill(paragraph, width, initial_indent=indent, subsequent_indent=indent))
        return "\n".join(out)


class Parser(argparse.ArgumentParser):
    """The ``fusionedge`` parser class: :class:`HelpFormatter` unless told otherwise.

    ``add_subparsers`` creates sub-parsers of the parser's own class, so every verb inherits it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def sub_verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-parsers of ``parser`` by name (empty for a verb without sub-verbs)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def walk_parsers(parser: argparse.ArgumentParser,
                 path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``parser`` and every parser below it, each with its verb path (``()``, ``("fleet", "agent")``...)."""
    yield path, parser
    for name, sub in sub_verbs(parser).items():
        yield from walk_parsers(sub, (*path, name))


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every parser below it its examples from :data:`EXAMPLES` as epilog."""
    for path, p in walk_parsers(parser):
        lines = EXAMPLES.get(" ".join(path))
        if lines:
            p.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines)
