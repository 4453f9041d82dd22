"""Kept for the tools that import it by file (``make_decode_fixtures.py``): the code lives in
``armbench_segmentation.training.pretrained``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root

from armbench_segmentation.training.pretrained import *  # noqa: E402,F401,F403
from armbench_segmentation.training.pretrained import (  # noqa: E402,F401
    ALLOWLIST_PICKLE, CHECKPOINT_FILE, AllowListUnpickler, fetch_pretrained, load_checkpoint_safely, sha256_of,
)
