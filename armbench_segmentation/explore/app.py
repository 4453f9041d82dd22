"""The explorer's Flask app over one :class:`~armbench_segmentation.explore.run.ExploreRun`.

Endpoints (all GET unless said; JSON unless said)::

    /                                  the page (static/index.html)
    /static/<file>                     the page's JS/CSS (package data, Flask's safe static route)
    /vendor/plotly.min.js              plotly.js from the installed plotly package
    /vendor/map.js                     the map shared with the static dashboard (analysis/dashboard/map.js)
    /api/meta                          run summary, columns with definitions, clusters, error kinds
    /api/points                        ids, splits, clusters, map coordinates (aligned lists)
    /api/column?name=C                 one column: numeric values or categorical codes
    /api/sample?split=S&id=ID          the sample view's data (stored facts, row)
    /api/image?split=S&id=ID&side=N&layers=gt,pred,heat&error=KIND    JPEG
    /api/selections                    names; POST {name, samples: [[split, id]...], filter} saves one
    /api/selections/<name>             one selection
    POST /api/selections/<name>/export writes its exports, returns their paths (run-relative)
    /api/selections/<name>/download/<kind>   an export file

Every parameter is checked: a sample must be in the run (404 otherwise), the image side is
clamped, names are :func:`selections.check_name`-valid, no endpoint takes a file path.
Writes need a JSON body (a cross-site form cannot send one without a CORS preflight, which
this app never answers) and, when the browser sends an Origin, the app's own origin. Hosts
other than the bound loopback names are refused (DNS rebinding).
"""

from __future__ import annotations

import logging
import socket
from importlib import resources
from pathlib import Path
from typing import Any

from armbench_segmentation.errors import ArmbenchError, SampleError
from armbench_segmentation.explore import selections
from armbench_segmentation.explore.run import ExploreRun, clamp_side

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def static_dir() -> Path:
    return Path(str(resources.files("armbench_segmentation.explore").joinpath("static")))


def map_js_path() -> Path:
    """The population map shared with the static dashboard (``analysis/dashboard/map.js``)."""
    return Path(str(resources.files("armbench_segmentation.analysis").joinpath("dashboard", "map.js")))


def create_app(run: ExploreRun, allowed_hosts: tuple[str, ...] | None = LOOPBACK_NAMES) -> Any:
    """The Flask app. ``allowed_hosts``: Host header names accepted (None: any, for a
    non-loopback ``--host`` the user chose)."""
    from flask import Flask, Response, abort, jsonify, request, send_file

    app = Flask(__name__, static_folder=str(static_dir()), static_url_path="/static")
    app.json.sort_keys = False  # keep the store's order (error kinds, columns)
    app.json.ensure_ascii = True  # \u escapes: no raw U+2028 or markup characters in JSON
    from armbench_segmentation.analysis.report import plotly_js_path

    plotly_js = plotly_js_path()  # the same file the static dashboard copies

    def error(status: int, message: str) -> Any:
        response = jsonify({"error": message})
        response.status_code = status
        return response

    @app.before_request
    def _check_request() -> Any:
        if allowed_hosts is not None:
            host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") else \
                (request.host or "").split("]")[0] + "]"
            if host not in allowed_hosts:
                return error(403, "this explorer answers only on its loopback address")
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            if origin is not None and origin != request.host_url.rstrip("/"):
                return error(403, "cross-origin writes are refused")
            if not request.is_json:
                return error(415, "send a JSON body (Content-Type: application/json)")
        return None

    @app.after_request
    def _headers(response: Any) -> Any:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def sample_key() -> tuple[str, str]:
        split, sid = request.args.get("split"), request.args.get("id")
        if not isinstance(split, str) or not isinstance(sid, str) or not run.has(split, sid):
            abort(404, description="no such sample in this run")
        return split, sid

    @app.errorhandler(404)
    def _not_found(exc: Any) -> Any:
        return error(404, getattr(exc, "description", None) or "not found")

    @app.errorhandler(405)
    def _not_allowed(exc: Any) -> Any:
        return error(405, "method not allowed")

    @app.get("/")
    def index() -> Any:
        return send_file(static_dir() / "index.html", mimetype="text/html")

    @app.get("/vendor/plotly.min.js")
    def plotly() -> Any:
        response = send_file(plotly_js, mimetype="application/javascript", max_age=3600)
        response.headers["Cache-Control"] = "max-age=3600"
        return response

    @app.get("/vendor/map.js")
    def map_js() -> Any:
        return send_file(map_js_path(), mimetype="application/javascript")

    @app.get("/api/meta")
    def meta() -> Any:
        out = run.meta()
        out["selections"] = selections.names(run.run_dir)
        out["labeling_exports"] = selections.labeling_available()
        return jsonify(out)

    encoded: dict[str, bytes] = {}  # the run does not change while it is served: encode each payload once

    def cached_json(key: str, make: Any) -> Any:
        if key not in encoded:
            encoded[key] = app.json.dumps(make()).encode()
        return Response(encoded[key], mimetype="application/json")

    @app.get("/api/points")
    def points() -> Any:
        return cached_json("points", run.points)

    @app.get("/api/column")
    def column() -> Any:
        name = request.args.get("name", "")
        if name not in run.columns:
            return error(404, "no such column")
        return cached_json("column:" + name, lambda: run.column(name))

    @app.get("/api/sample")
    def sample() -> Any:
        split, sid = sample_key()
        return jsonify(run.sample(split, sid))

    @app.get("/api/image")
    def image() -> Any:
        split, sid = sample_key()
        layers = tuple(v for v in request.args.get("layers", "").split(",") if v)
        kind = request.args.get("error") or None
        try:
            data = run.render(split, sid, clamp_side(request.args.get("side")), layers, kind)
        except ValueError as exc:
            return error(400, str(exc))
        except SampleError as exc:
            return error(409, run.page_text(str(exc)))
        return Response(data, mimetype="image/jpeg")

    @app.get("/api/selections")
    def list_selections() -> Any:
        return jsonify({"selections": selections.names(run.run_dir)})

    @app.post("/api/selections")
    def save_selection() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return error(400, "send a JSON object {name, samples, filter}")
        try:
            record = selections.save(run, body.get("name"), body.get("samples") or [], body.get("filter"),
                                     overwrite=bool(body.get("overwrite")))
        except selections.SelectionError as exc:
            return error(400, str(exc))
        return jsonify({"name": record["name"], "count": record["count"]}), 201

    @app.get("/api/selections/<name>")
    def get_selection(name: str) -> Any:
        try:
            return jsonify(selections.load(run, name))
        except selections.SelectionError as exc:
            return error(404, str(exc))

    @app.post("/api/selections/<name>/export")
    def export_selection(name: str) -> Any:
        try:
            paths = selections.export(run, name)
        except selections.SelectionError as exc:
            return error(404, str(exc))
        except ArmbenchError as exc:
            return error(409, run.page_text(str(exc)))
        return jsonify({"name": name, "files": paths})

    @app.get("/api/selections/<name>/download/<kind>")
    def download(name: str, kind: str) -> Any:
        try:
            files = selections.exported(run, name)
        except selections.SelectionError as exc:
            return error(404, str(exc))
        if kind not in files:
            return error(404, "no such export; export the selection first")
        path = files[kind]
        return send_file(path, as_attachment=True, download_name=path.name,
                         mimetype="text/csv" if path.suffix == ".csv" else "application/json")

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, quiet: bool = False) -> None:
    """Open the run and serve it until interrupted (werkzeug's threaded server)."""
    from werkzeug.serving import make_server

    run = ExploreRun(run_dir)
    loopback = host in ("127.0.0.1", "localhost", "::1")
    app = create_app(run, LOOPBACK_NAMES if loopback else None)
    try:  # bound here: werkzeug's own bind error exits the process with its own message
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        run.close()
        raise ArmbenchError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") from None
    server = make_server(host, sock.getsockname()[1], app, threaded=True, fd=sock.fileno())
    if not loopback:
        logger.warning("serving on %s: anyone who can reach this address can read the run's results and images",
                       host)
    shown = f"[{host}]" if ":" in host else host
    print(f"armbench serve: {len(run.frame)} samples of run {run.run_key}; open http://{shown}:{server.port}/ "
          f"(Ctrl+C stops)", flush=True)
    if not quiet:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        run.close()


def spawn(run_dir: str | Path, port: int = 0, timeout: float = 60.0) -> tuple[Any, str]:
    """Start ``armbench serve RUN_DIR`` in a subprocess (``--port 0``: a free port) and wait
    for the line with its address. Returns (Popen, base URL). For tests and benchmarks; the
    caller terminates the process.

    Raises:
        RuntimeError: the process ended or printed no address within ``timeout`` (its output
            is in the message).
    """
    import re
    import subprocess
    import sys
    import threading
    import time

    proc = subprocess.Popen([sys.executable, "-m", "armbench_segmentation.cli", "serve", str(run_dir), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # keeps draining so the server never blocks on a full pipe
            lines.append(line)
            m = re.search(r"open (http://\S+/)", line)
            if m and not found:
                found.append(m.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not found:
        proc.kill()
        raise RuntimeError("armbench serve did not start: " + "".join(lines)[-2000:])
    return proc, found[0]
