"""Export fine-tuned YOLOv5s-seg weights to ONNX in the project's layout (+ embedding).

    .venv/bin/python tools/export_onnx.py --weights models/tuned.onnx.work/final_weights.pt \\
        --out models/tuned.onnx [--static] [--use-raw]

A thin wrapper: the layout, the export and its onnxruntime check live in
``armbench_segmentation.training.export`` (``armbench finetune`` exports with it); weights are
loaded by ``training.model.load_checkpoint_base``. ``--static``: 1x3x640x640 with
output0/output1 only (the stock layout, for tests). Needs the train extra (``make install-train``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root


def main(argv=None) -> int:
    from armbench_segmentation.errors import ArmbenchError
    from armbench_segmentation.training import require_train_extra

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description="Export fine-tuned YOLOv5s-seg weights to ONNX")
    p.add_argument("--weights", required=True, type=Path, help="final_weights.pt or last.pt written by armbench finetune")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--static", action="store_true", help="1x3x640x640, output0/output1 only (stock layout, no embedding)")
    p.add_argument("--use-raw", action="store_true", help="with last.pt: export the raw (non-EMA) weights")
    p.add_argument("--no-check", dest="check", action="store_false")
    a = p.parse_args(argv)
    try:
        require_train_extra()
        import torch

        from armbench_segmentation.training.export import export
        from armbench_segmentation.training.model import build_model, load_checkpoint_base

        if a.use_raw:
            state = torch.load(str(a.weights), map_location="cpu", weights_only=True)
            model = build_model(state.get("class_names", ["Object", "Tote"]), fused=bool(state.get("fused")))
            model.load_state_dict(state["model"])
        else:
            model, _ = load_checkpoint_base(a.weights)
        info = export(model.float().eval(), a.out, static=a.static, check=a.check)
    except ArmbenchError as exc:
        print(f"export_onnx: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in info.items() if k != "check"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
