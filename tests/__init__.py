"""The open_tips test suite.

``COCO_MINI``: the COCO-mini folder (``train2017/``, ``val2017/``, ``annotations/``) that some tests read real
images from: ``$OPEN_TIPS_COCO_MINI`` when set, else ``../shared/data/coco-mini`` beside the repository. Tests
that need it skip (with the path in the reason) when it is absent.
"""

import os
from pathlib import Path

COCO_MINI = Path(
    os.environ.get("OPEN_TIPS_COCO_MINI")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco-mini"
).expanduser()
