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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="armbench",
        description="Instance-segmentation failure analysis for ARMBench tote images.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
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
