"""``armbench serve RUN_DIR``: explore a run in the browser (map, sample view, selections).

Examples::

    armbench analyze --synthetic --out /tmp/armbench-demo
    armbench serve /tmp/armbench-demo                 # http://127.0.0.1:8765/
    armbench serve /tmp/armbench-demo --port 9000

Bound to 127.0.0.1 by default: only this machine can open it. Selections are saved into
``RUN_DIR/selections/``; nothing else in the run folder is changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from armbench_segmentation.errors import ArmbenchError

DEFAULT_PORT = 8765


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the --out folder of 'armbench analyze'")
    parser.add_argument("--port", metavar="N", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--host", metavar="ADDR", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; another address makes the "
                             "run's images and results readable by whoever can reach it)")


def run(args: argparse.Namespace) -> int:
    from armbench_segmentation.explore.app import serve

    if not 0 <= args.port <= 65535:
        raise ArmbenchError(f"--port must be in 0..65535, got {args.port}")
    serve(args.run_dir, host=args.host, port=args.port)
    return 0
