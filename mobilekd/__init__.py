"""mobilekd: distil large image-embedding models into small, fast, faithful on-device students."""

# Importing mobilekd changes nothing in the caller's environment: offline behaviour (HF_HUB_OFFLINE=1, so hub
# look-ups fail in 0.1 s instead of ~46 s of retries without internet) is set by the Makefile and the tests.

from mobilekd._torchvision_shim import ensure_torchvision_importable as _ensure_torchvision_importable

_ensure_torchvision_importable()  # must run before anything imports timm or torchvision

__version__ = "0.1.0"
