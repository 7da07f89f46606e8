"""Image loading and the train/test transforms of the LOCATE lineage (methods.md §0.3).

torchvision is not a dependency, so the few transforms the methods use are written here with PIL
and torch. They follow torchvision's arithmetic (short-side size rounding, crop offsets drawn with
``torch.randint``, PIL bilinear resampling) so that results match the reference pipelines. Every
random draw comes from a caller-supplied ``torch.Generator``: the dataset seeds one per sample from
(seed, epoch, index), which makes an interrupted run resume bit-exactly whatever the worker count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from afford.errors import AffordError

# Errors PIL raises for a file that exists but does not decode (truncated, not an image, bomb).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
)


def as_8bit(im: Image.Image) -> Image.Image:
    """``im`` with 16-bit and 32-bit greyscale (modes ``I;16*``, ``I``, ``F``) scaled to 8-bit ``L`` by
    their type's range (16-bit: / 257; float: [0, 1], or PIL's [0, 255] when a value exceeds 1, or its
    own maximum above 255; 32-bit integers (``I``, also how PIL opens some 16-bit PNGs): 8-bit values
    when none exceeds 255, as ``convert("I")`` of an 8-bit image makes them, 16-bit up to 65535, their
    own maximum beyond); other modes unchanged. PIL's
    ``convert("L")``/``convert("RGB")`` clip such images at 255 instead, which turns most of a 16-bit
    heatmap white (and reading a [0, 255] float image as [0, 1] would turn it white too)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            a = a / 257.0
        elif im.mode == "F":
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
            top = a.max() if a.size else 0.0
            a = a * 255.0 if top <= 1.0 else a if top <= 255.0 else a * (255.0 / top)
        else:
            top = a.max() if a.size else 0.0
            a = a if top <= 255 else a / (257.0 if top <= 65535 else top / 255.0)
        im = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")
    return im


def as_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB, deep greyscale scaled (:func:`as_8bit`), not clipped."""
    return as_8bit(im).convert("RGB")


def array_image(image: np.ndarray) -> Image.Image:
    """An ``(H, W, 3)`` array as a PIL image: uint8 in [0, 255] or float in [0, 1] (scaled by 255 and
    rounded). Any other dtype, or a float array outside [0, 1] or holding nan, is an AffordError
    (never a silent cast: ``astype(uint8)`` turns a [0, 1] image black and wraps 300 to 44)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise AffordError(f"image: expected an (H, W, 3) array, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        finite = bool(np.isfinite(image).all())
        if image.size and not (finite and image.min() >= 0.0 and image.max() <= 1.0):
            got = f"values in [{image.min():g}, {image.max():g}]" if finite else "nan or inf values"
            raise AffordError(f"image: a float array must hold values in [0, 1] (got {image.dtype} with "
                              f"{got}); pass uint8 for [0, 255]")
        image = (image.astype(np.float64) * 255.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise AffordError(f"image: expected a uint8 array in [0, 255] or a float array in [0, 1], "
                          f"got dtype {image.dtype}")
    return Image.fromarray(np.ascontiguousarray(image))


def load_rgb(path: str | Path, upright: bool = False) -> Image.Image:
    """Fully decode ``path`` as an RGB image.

    The decode happens here (not lazily inside a DataLoader worker) so that a broken file is
    reported by name instead of as a worker traceback. ``upright``: apply the file's EXIF
    orientation, as a viewer shows a phone photo (a user's image in ``predict`` and the app); the
    datasets keep the stored pixels, as the references read them and their ground truth is drawn.
    """
    path = Path(path)
    if not path.is_file():
        raise AffordError(f"{path}: " + ("a folder; expected an image file" if path.is_dir() else
                                         "file not found (expected an image)"))
    try:
        with Image.open(path) as im:
            return as_rgb(ImageOps.exif_transpose(im) if upright else im)
    except (*DECODE_ERRORS, EOFError) as e:
        raise AffordError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def load_gray(path: str | Path, what: str) -> np.ndarray:
    """A PNG (GT heatmap, object mask, prediction) as uint8 ``(H, W)``, read as grayscale like the
    reference ``process_gt`` (a 16-bit file scaled to 8 bits, :func:`as_8bit`); errors name the file
    and ``what`` it should have been."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.array(as_8bit(im).convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise AffordError(f"{path}: {what} file not found") from None
    except (*DECODE_ERRORS, EOFError) as e:
        raise AffordError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float32 in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def eval_transform(img: Image.Image, size: int = 224) -> torch.Tensor:
    """Square resize to ``size`` (PIL bilinear, as every reference test loader) -> (3, S, S) in [0, 1].

    No normalisation: each backbone normalises its own input (``VisionBackbone.normalize``).
    """
    return to_tensor(img.convert("RGB").resize((size, size), Image.BILINEAR))


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after resizing the short side to ``size``, with torchvision's truncation rule."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


class TrainTransform:
    """Resize -> RandomCrop -> RandomHorizontalFlip (methods.md §0.3) -> (3, crop, crop) in [0, 1].

    The references normalise here; afford leaves it to each backbone (same arithmetic, so the
    same numbers reach the network), so one tensor can feed backbones with different statistics.

    ``square=False`` is LOCATE/WSMA's ``Resize(resize)`` on the short side; ``square=True`` is
    LoopTrans's ``Resize((resize, resize))``. Call as ``t(img, generator)``; the draws are, in
    order, crop row, crop column, flip, so a given generator state fixes the output.
    """

    def __init__(
        self,
        resize: int = 256,
        crop: int = 224,
        flip: bool = True,
        square: bool = False,
    ) -> None:
        if crop > resize:
            raise AffordError(f"TrainTransform: crop ({crop}) must not exceed resize ({resize})")
        self.resize, self.crop, self.flip, self.square = resize, crop, flip, square

    def __repr__(self) -> str:
        return (f"TrainTransform(resize={self.resize}, crop={self.crop}, flip={self.flip}, "
                f"square={self.square})")

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """(3, crop, crop) float32; ``generator=None`` falls back to torch's global RNG."""
        img = img.convert("RGB")
        if self.square:
            w, h = self.resize, self.resize
        else:
            w, h = short_side_size(img.width, img.height, self.resize)
        img = img.resize((w, h), Image.BILINEAR)
        top = int(torch.randint(0, h - self.crop + 1, (1,), generator=generator).item())
        left = int(torch.randint(0, w - self.crop + 1, (1,), generator=generator).item())
        x = to_tensor(img.crop((left, top, left + self.crop, top + self.crop)))
        if self.flip and bool(torch.rand(1, generator=generator).item() < 0.5):
            x = x.flip(-1)
        return x
