"""The ``fusionedge`` command line: one command, one verb per job.

:func:`build_parser` registers the verb modules of this package (each owns its verb's options and
handler; shared options are in :mod:`fusionedge.cli.options`). Every verb is listed whatever is
installed: a verb whose optional extra is missing says which one to install when it runs
(:mod:`fusionedge.cli.extras`), and parsing imports nothing heavy. The conventions users expect of
a command line hold for every verb: ``--version``; ``-v`` and ``--json`` before or after the verb;
each option's help with its default and an example per verb (:mod:`fusionedge.cli.help`); a verb
that groups others names its sub-verbs when given none; the long-running verbs (``run``, ``fleet
agent``) also read a ``--config`` file and ``FUSIONEDGE_*`` variables (:mod:`fusionedge.cli.config`). :func:`main` turns what a user
can cause into one line on stderr and exit status 2: a :class:`~fusionedge.sdk.errors.FusionEdgeError`
(bad input, bad bundle, missing file) and an ``OSError`` from the machine (a path that cannot be
written, a full disk). A reader that closes the pipe early ends the command quietly with status 141,
as a shell reports SIGPIPE. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import select
import sys
from collections.abc import Sequence

from fusionedge.cli.config import apply_config, find_verb_parser
from fusionedge.cli.help import Parser, add_examples, walk_parsers
from fusionedge.cli.options import add_sub_verbs, add_training_arguments
from fusionedge.cli.output import quiet_broken_pipe
from fusionedge.cli.predict import format_result
from fusionedge.sdk.errors import FusionEdgeError

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_USER_ERROR", "add_training_arguments", "build_parser", "format_result",
           "main", "parse_args"]

log = logging.getLogger(__name__)

#: A user error (one line on stderr).
EXIT_USER_ERROR = 2
#: The reader of stdout went away (128 + SIGPIPE, what a shell reports for a command it killed).
EXIT_BROKEN_PIPE = 141
#: Interrupted with Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The ``fusionedge`` parser with every verb registered."""
    from fusionedge.cli.ask import add_ask_parser
    from fusionedge.cli.bench import add_bench_parser
    from fusionedge.cli.calibrate import add_calibrate_parser
    from fusionedge.cli.compare import add_compare_parser
    from fusionedge.cli.compress import add_compress_parser
    from fusionedge.cli.completion import add_completion_parser
    from fusionedge.cli.data import add_data_parser
    from fusionedge.cli.doctor import add_doctor_parser
    from fusionedge.cli.engine import add_engine_parser
    from fusionedge.cli.explain import add_explain_parser
    from fusionedge.cli.export import add_export_parser
    from fusionedge.cli.fleet import add_fleet_parser
    from fusionedge.cli.import_model import add_import_parser
    from fusionedge.cli.predict import add_predict_parsers
    from fusionedge.cli.qa import add_qa_parser
    from fusionedge.cli.quantize import add_quantize_parsers
    from fusionedge.cli.quickstart import add_quickstart_parser
    from fusionedge.cli.report import add_report_parser
    from fusionedge.cli.run import add_run_parser
    from fusionedge.cli.track import add_track_parser
    from fusionedge.cli.train import add_distill_parser, add_pretrain_parser, add_train_parser

    parser = Parser(
        prog="fusionedge",
        description="Multimodal (camera + audio) perception from training to edge devices.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the installed version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level (also after the verb)")
    parser.add_argument("--json", dest="json_first", action="store_true",
                        help="the verb's --json, given before the verb")
    verbs = add_sub_verbs(parser, "verb", what="verb")
    add_data_parser(verbs)
    add_train_parser(verbs)
    add_export_parser(verbs)
    add_import_parser(verbs)
    add_predict_parsers(verbs)
    add_ask_parser(verbs)
    add_explain_parser(verbs)
    add_calibrate_parser(verbs)
    add_qa_parser(verbs)
    add_quickstart_parser(verbs)
    add_pretrain_parser(verbs)
    add_distill_parser(verbs)
    add_report_parser(verbs)
    add_run_parser(verbs)
    add_track_parser(verbs)
    add_quantize_parsers(verbs)
    add_compress_parser(verbs)
    add_engine_parser(verbs)
    add_compare_parser(verbs)
    add_bench_parser(verbs)
    add_fleet_parser(verbs)
    add_doctor_parser(verbs)
    add_completion_parser(verbs)
    for path, p in walk_parsers(parser):
        if path:
            # SUPPRESS: a verb parsed without -v leaves the value given before the verb alone.
            p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="log at debug level")
    add_examples(parser)
    return parser


class _VersionAction(argparse.Action):
    """``--version``: print ``fusionedge X.Y.Z`` and exit (the version is looked up only then)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from fusionedge.sdk import __version__

        print(f"fusionedge {__version__}")
        parser.exit()


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and merge the options that may come before the verb (``--json``) into the verb's.

    A verb that takes ``--config`` gets its options from that file and the environment first
    (:func:`fusionedge.cli.config.apply_config`; flags still win). Exits with status 2 (argparse's
    usage error) for ``--json`` before a verb that has none.

    Raises:
        InputError: a bad ``--config`` file or ``FUSIONEDGE_*`` variable.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    apply_config(parser, argv)
    args = parser.parse_args(argv)
    if args.json_first and args.verb is not None:  # without a verb, the verb's own message follows
        if not hasattr(args, "json"):
            parser.error(f"fusionedge {_verb_path(args)} has no --json")
        args.json = True
    del args.json_first
    return args


def _verb_path(args: argparse.Namespace) -> str:
    """``fleet publish``, ``data synth``, ``eval``: the verb as typed, for error lines."""
    subs = [v for k, v in vars(args).items() if k.endswith("_verb") and isinstance(v, str)]
    return " ".join([args.verb, *subs])


def _os_error_line(e: OSError) -> str:
    """One line naming the path(s) and the reason, e.g. ``/proc/x: No such file or directory``."""
    reason = e.strerror or str(e)
    if e.filename is None:
        return reason
    paths = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{paths}: {reason}"


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (a ``BrokenPipeError`` from a socket is not).

    Where stdout is no file descriptor (captured), the answer is yes: nothing else can be told.
    """
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fusionedge`` console script. Returns the process exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(parser, argv)
    except FusionEdgeError as e:  # a bad --config file or FUSIONEDGE_* variable
        verb = " ".join(("fusionedge", *find_verb_parser(parser, argv)[0]))
        print(f"{verb}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except FusionEdgeError as e:
        log.debug("%s", _verb_path(args), exc_info=True)  # with -v: where the error came from
        print(f"fusionedge {_verb_path(args)}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError as e:
        if _stdout_reader_gone():
            quiet_broken_pipe()
            return EXIT_BROKEN_PIPE
        log.debug("%s", _verb_path(args), exc_info=True)
        print(f"fusionedge {_verb_path(args)}: error: {_os_error_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        log.debug("%s", _verb_path(args), exc_info=True)
        print(f"fusionedge {_verb_path(args)}: error: {_os_error_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
