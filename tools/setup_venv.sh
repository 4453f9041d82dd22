#!/usr/bin/env bash
# Recreate the tools virtualenv (fine-tuning, ONNX export, evaluation) at tools/.venv.
# Not part of the runtime install. Usage: bash tools/setup_venv.sh [PYTHON]   (python 3.11 was used)
#
# Why pip and not Poetry/uv: torch 2.14.1 + torchvision 0.29.1 are taken as a matching pair
# from the local wheel indexes of the build machines (pip's extra-index-url); other resolvers
# would download a multi-GB CUDA torch from PyPI.
# Why two --no-deps installs: yolov5==7.0.14 declares GUI OpenCV, boto3, roboflow, ... as
# dependencies; we only need its model/loss code, plus `ultralytics` (which it imports).
# Their real runtime needs are listed in tools/requirements.txt.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${1:-python3}"
VENV="${TOOLS_VENV:-$HERE/.venv}"  # TOOLS_VENV: build elsewhere (e.g. to test this script)

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
"$VENV/bin/pip" install -q --no-deps yolov5==7.0.14 ultralytics==8.4.190
"$VENV/bin/python" - <<'PY'
import torch, torchvision, onnx, onnxruntime, pycocotools, cv2  # noqa: F401
from yolov5.models.yolo import SegmentationModel  # noqa: F401
from yolov5.utils.segment.loss import ComputeLoss  # noqa: F401
from ultralytics.nn.tasks import SegmentationModel as _UltralyticsSeg  # noqa: F401  (YOLOv8/YOLO11 golden fixtures)
from ultralytics.utils.nms import non_max_suppression  # noqa: F401
print("tools venv OK: torch", torch.__version__, "torchvision", torchvision.__version__)
PY
