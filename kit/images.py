"""Images on the wire and on disk: RGB uint8 arrays to and from PNG bytes (Pillow, loaded when used)."""

from __future__ import annotations

import io

import numpy as np


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB (or grey) uint8 array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """RGB uint8 array (H, W, 3) from PNG bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))
