"""Option groups more than one verb shares, each defined once.

``--json`` (one strict JSON object on stdout, printed by :func:`fusionedge.cli.output.print_json`),
``--backends`` (an ordered, comma-separated list of SDK backends) and the options of a training run
(``train``, ``distill``) are added here so that every verb spells, parses and documents them alike.
Nothing here imports more than the standard library at parse time.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionedge.sdk.errors import InputError

__all__ = [
    "DEFAULT_BACKENDS",
    "add_backends_option",
    "add_json_option",
    "add_metrics_options",
    "add_sub_verbs",
    "add_training_arguments",
    "parse_backends",
    "parse_overrides",
    "start_metrics",
]

#: What ``--backends`` means when a verb that runs a bundle is not told otherwise.
DEFAULT_BACKENDS = ("onnxruntime",)


def add_json_option(p: argparse.ArgumentParser,
                    help: str = "print one JSON object on stdout") -> None:
    """Add ``--json`` to a verb's parser.

    Args:
        p: the verb's parser.
        help: the option's help text (a verb that prints one object per event says so).
    """
    p.add_argument("--json", action="store_true", help=help)


def add_sub_verbs(p: argparse.ArgumentParser, dest: str, what: str = "sub-verb") -> Any:
    """Add the sub-verbs of a verb that only groups others (``data``, ``engine``, ``fleet``).

    Given without a sub-verb, the verb is a usage error that names the choices (``fusionedge data:
    error: choose a sub-verb: synth``) rather than argparse's internal destination name.

    Args:
        p: the grouping verb's parser.
        dest: the attribute that holds the chosen sub-verb (it ends in ``_verb``).
        what: how the message and the usage line call a choice.

    Returns:
        The object on which ``add_parser`` registers each sub-verb.
    """
    sub = p.add_subparsers(dest=dest, metavar=what.upper().replace("-", "_"), title=f"{what}s")

    def choose(args: argparse.Namespace) -> int:
        p.error(f"choose a {what}: {', '.join(sub.choices)}")
        return 2  # not reached: error() exits

    p.set_defaults(func=choose)
    return sub


def add_metrics_options(p: argparse.ArgumentParser, what: str) -> None:
    """Add ``--metrics-port`` and ``--metrics-host`` (a Prometheus endpoint, off unless a port is given).

    Args:
        p: the verb's parser.
        what: what the metrics describe, for the help text.
    """
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help=f"serve Prometheus metrics of {what} at http://HOST:PORT/metrics (0: any free port; "
                        f"needs the 'telemetry' extra; default: no metrics)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="the address the metrics endpoint listens on; 0.0.0.0 exposes it to the network")


def start_metrics(args: argparse.Namespace, registry: Any) -> Any:
    """Serve ``registry`` as ``--metrics-host/--metrics-port`` say, and say where on stderr.

    Returns:
        The :class:`~fusionedge.sdk.telemetry.MetricsServer` (close it when the verb ends).
    """
    import sys

    from fusionedge.sdk.telemetry import serve_metrics

    server = serve_metrics(registry, host=args.metrics_host, port=args.metrics_port)
    print(f"metrics at {server.url}", file=sys.stderr, flush=True)
    return server


def parse_backends(text: str) -> list[str]:
    """Parse ``--backends``: ``"tensorrt, onnxruntime"`` -> ``["tensorrt", "onnxruntime"]``.

    Names are stripped and empty items dropped; the order is the order the SDK tries them in.

    Raises:
        argparse.ArgumentTypeError: no backend named at all (argparse reports it as a usage error).
    """
    names = [b.strip() for b in text.split(",") if b.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated backend names, got {text!r}")
    return names


def add_backends_option(p: argparse.ArgumentParser, *, default: Sequence[str] | None = DEFAULT_BACKENDS,
                        help: str = "ordered, comma-separated backends to try") -> None:
    """Add ``--backends`` (parsed by :func:`parse_backends`) to a verb's parser.

    Args:
        p: the verb's parser.
        default: the list used without the option (None: the verb picks, e.g. every available one).
        help: the option's help text.
    """
    p.add_argument("--backends", type=parse_backends, default=list(default) if default is not None else None,
                   metavar="NAME[,NAME...]", help=help)


def parse_overrides(items: Sequence[str] | None) -> dict:
    """``["video_depth=0", "audio_channels=[8,8,16]"]`` -> ModelConfig overrides (values parsed as JSON).

    A value that is not JSON is kept as a bare string (``fusion=concat``).

    Raises:
        InputError: an item without ``=`` or without a field name.
    """
    overrides = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def add_training_arguments(p: argparse.ArgumentParser, *, model_help: str = "registry name "
                           "(see fusionedge.training.models)") -> None:
    """The options of a training run, shared by ``train`` and ``distill`` (one handler: ``cmd_train``).

    Args:
        p: the verb's parser.
        model_help: help text of ``--model``.
    """
    p.add_argument("--data", required=True, type=Path, help="training manifest or its folder")
    p.add_argument("--val", type=Path, default=None, help="validation manifest (default: 10%% of --data)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (checkpoints, metrics); default with --resume: that run's folder")
    p.add_argument("--model", default="fusion_student", help=model_help)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a ModelConfig field (JSON value), e.g. --set video_depth=0; repeatable")
    p.add_argument("--epochs", type=int, default=None, help="passes over the training data (default: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step and process (default: 32)")
    p.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default: 0.003)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialization, shuffling and augmentation")
    p.add_argument("--init", type=Path, default=None,
                   help="initialize weights from a checkpoint (or a pretraining checkpoint's encoders)")
    p.add_argument("--encoder-lr-scale", type=float, default=None,
                   help="the encoders' learning rate as a fraction of --lr (e.g. 0.1 to fine-tune pretrained ones)")
    p.add_argument("--frozen-encoder-epochs", type=int, default=None,
                   help="train everything but the encoders for the first N epochs (linear probe, then fine-tune)")
    p.add_argument("--resume", type=Path, default=None,
                   help="continue a run exactly from its last.pt (give the first run's options again)")
    p.add_argument("--device", default=None, help="auto (default: cuda:LOCAL_RANK if available), cpu, cuda:0...")
    p.add_argument("--task-weighting", choices=("fixed", "uncertainty"), default=None,
                   help="fixed loss weights (default) or learned uncertainty weights per task group")
    p.add_argument("--task-schedule", choices=("joint", "alternating"), default=None,
                   help="all task groups every step (default) or one group per step, round-robin")
    p.add_argument("--max-train-samples", type=int, default=None,
                   help="train on the first N training samples only (few-label experiments)")
