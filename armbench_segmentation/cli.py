"""The ``armbench`` command line: one sub-command per job.

Each sub-command lives in ``armbench_segmentation/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported lazily so
``armbench --help`` stays fast and one broken optional dependency does not take every
command down.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from armbench_segmentation import package_version
from armbench_segmentation.errors import ArmbenchError

# where bugs go (the project has no public tracker address in pyproject.toml)
REPORT_TO = "the armbench-segmentation maintainers (the project's issue tracker)"

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("armbench_segmentation.commands.synth", "generate an ARMBench-like synthetic tote dataset"),
    "info": ("armbench_segmentation.commands.info", "summarise a dataset (counts, sizes, annotation problems)"),
    "predict": ("armbench_segmentation.commands.predict", "run the ONNX model, write COCO results JSON"),
    "evaluate": ("armbench_segmentation.commands.evaluate", "COCO AP plus over/under segmentation report"),
    "analyze": ("armbench_segmentation.commands.analyze", "full analysis: map, clusters, picks, galleries, dashboard"),
    "finetune": ("armbench_segmentation.commands.finetune", "fine-tune the model on COCO files (train extra), export ONNX + card"),
    "compare": ("armbench_segmentation.commands.compare", "compare two analyze runs on the same data: AP, losses, errors fixed/new"),
    "loop": ("armbench_segmentation.commands.loop", "one active-learning round: analyze, picks, merge labels, finetune, compare"),
    "serve": ("armbench_segmentation.commands.serve", "explore a run in the browser: map, sample view, selections"),
    "merge-labels": ("armbench_segmentation.commands.merge_labels", "add annotated images (CVAT / Label Studio COCO) to a train COCO file"),
    "export-fiftyone": ("armbench_segmentation.commands.export_fiftyone", "write a run as a FiftyOne-importable dataset (COCO + fields Parquet + loader)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="armbench",
        description="Instance-segmentation failure analysis for ARMBench tote images.",
    )
    parser.add_argument("--version", action="version", version=f"armbench {package_version()}",
                        help="print the installed version and exit")
    _add_verbosity_arguments(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        # also after the command (`armbench analyze -q`); SUPPRESS keeps a flag given before it
        _add_verbosity_arguments(p, top=False)
        p.set_defaults(_module=module)
    return parser


def _add_verbosity_arguments(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-v`` / ``-q``, before the command (``top``) and after it; after it they default to
    SUPPRESS so they do not reset what was given before it."""
    group = parser.add_argument_group("output").add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0 if top else argparse.SUPPRESS,
                       help="more log messages: -v notes on the work (INFO), -vv debugging (DEBUG); "
                            "default: warnings and errors only")
    group.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                       help="errors only: no warnings, no progress bars (results are still printed)")


def log_level(verbose: int = 0, quiet: bool = False) -> int:
    """The root logging level for ``-q`` / (none) / ``-v`` / ``-vv``: ERROR, WARNING, INFO, DEBUG.

    What a command found (its outputs, the summary) is printed, never logged, so no level
    hides it; the log carries warnings about the input and notes on the work.
    """
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(int(verbose or 0), logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = bool(getattr(args, "quiet", False))
    logging.basicConfig(level=log_level(getattr(args, "verbose", 0), quiet),
                        format="%(levelname)s %(name)s: %(message)s")  # to stderr
    if quiet and hasattr(args, "no_progress"):  # progress bars (tqdm, on stderr) follow --quiet
        args.no_progress = True
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except ArmbenchError as exc:
        print(f"armbench {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # a file the user named (or a full disk) failed where no command turned it into an
        # ArmbenchError: one line with the file and the reason, no traceback
        print(f"armbench {args.command}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 1
    except Exception:  # a bug: show everything, then say so
        traceback.print_exc()
        print(f"armbench {args.command}: internal error: this is a bug in armbench, not in your input; please "
              f"report it to {REPORT_TO} with the traceback above and the command line", file=sys.stderr)
        return 3


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _os_error_line(exc: OSError) -> str:
    """``cannot write /x/y: Permission denied; check the path and its permissions``."""
    name = exc.filename if exc.filename is not None else None
    reason = exc.strerror or _one_line(exc)
    where = f" {name}" if name is not None else ""
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    return f"file system error on{where}: {reason}; check the path, its permissions and the free disk space"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
