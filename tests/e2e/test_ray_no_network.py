"""``armbench analyze --engine ray`` traced like the other commands (``test_no_network``).

Ray is a networked system by design: its processes (GCS, raylet, workers, this driver)
talk over TCP/gRPC. For a cluster the engine starts itself, every inet address they
connect or send to must be the loopback one (the node is pinned to 127.0.0.1, the
dashboard is off, usage statistics are off), and nothing may be left in HOME outside the
project's cache (Ray's auth token stays in the environment instead of ``~/.ray``).
"""

from __future__ import annotations

import re
import sys

import pytest

from test_no_network import CACHE, MODEL, STRACE, _home_entries, _run_traced  # noqa: E402  (sibling module)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace; `make browser`)"),
    pytest.mark.skipif(not MODEL.is_file(), reason=f"model {MODEL} absent (the shipped export, or ARMBENCH_MODEL)"),
]

_INET = re.compile(r'inet_addr\("(?P<v4>[^"]+)"\)|inet_pton\(AF_INET6, "(?P<v6>[^"]+)"')


def _not_loopback(lines: list[str]) -> list[str]:
    """The traced connect/sendto/sendmsg lines with an inet address that is not loopback
    (or that the parser cannot read: counted as not loopback)."""
    bad = []
    for line in lines:
        addresses = [m["v4"] or m["v6"] for m in _INET.finditer(line)]
        if not addresses or any(not (a.startswith(("127.", "::ffff:127.")) or a == "::1") for a in addresses):
            bad.append(line)
    return bad


def test_not_loopback_reads_strace_lines():
    lines = ['10 connect(7, {sa_family=AF_INET, sin_port=htons(6379), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
             '11 connect(8, {sa_family=AF_INET6, sin6_port=htons(443), inet_pton(AF_INET6, "::1", &sin6_addr)}, 28)',
             '14 connect(9, {sa_family=AF_INET6, inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr)}, 28)',
             '12 connect(9, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.2")}, 16) = 0',
             '13 connect(9, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("8.8.8.8")}, 16) = 0']
    assert _not_loopback(lines) == lines[3:]


def test_ray_engine_talks_only_to_loopback_and_leaves_home_clean(tiny_dataset, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  train_size: all\n  val_size: all\n  unlabeled_size: all\n"
                      "model:\n  device: cpu\nanalysis:\n  n_clusters: 2\n  label_budget: 2\n")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "armbench_segmentation.cli", "analyze", "--no-progress", "--dataset",
            str(tiny_dataset.root), "--model", str(MODEL), "--config", str(config), "--out", str(out),
            "--engine", "ray", "--ray-workers", "1"]
    proc, trace, home = _run_traced(argv, tmp_path, "ray", timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert (out / "samples.csv").is_file()
    assert trace.network, "no inet traffic traced at all: Ray did not run, nothing was tested"
    outside = _not_loopback(trace.network)
    assert outside == [], "Ray traffic to non-loopback addresses:\n" + "\n".join(outside[:10])
    stray = [p for p in _home_entries(home) if p not in (CACHE.parent, CACHE) and not p.is_relative_to(CACHE)]
    assert stray == [], f"new files in HOME outside ~/{CACHE}: {[str(p) for p in stray[:10]]}"
