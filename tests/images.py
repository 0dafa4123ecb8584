"""Test images: the real photos in tests/data/images, center-cropped and resized."""

import numpy as np
from PIL import Image
from reference import DATA

PHOTOS = ("astronaut.png", "coffee.png")


def load_photo(name: str, size: int = 512) -> np.ndarray:
    """(size, size, 3) float32 in [0, 1]: center square crop, Lanczos resize."""
    img = Image.open(DATA / "images" / name).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((size, size), Image.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))
