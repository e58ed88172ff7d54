"""mobilekd: distil large image-embedding models into small, fast, faithful on-device students."""

import os as _os

# Hub look-ups fail in 0.1 s instead of ~46 s of retries on machines without internet; users with a hub
# can still set HF_HUB_OFFLINE=0 explicitly.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mobilekd._compat import ensure_torchvision_importable as _ensure_torchvision_importable

_ensure_torchvision_importable()  # must run before anything imports timm or torchvision

__version__ = "0.1.0"
