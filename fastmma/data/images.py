"""Validated image loading shared by every data source: a path or a PIL image in, an RGB PIL image out."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .samples import ImageLike

TRANSPARENCY_BACKGROUND = (255, 255, 255)
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(image: ImageLike, size: int | tuple[int, int] | None = None) -> Image.Image:
    """An RGB PIL image from a PIL image or a path, resized (bicubic) to `size` (int = square) if given.

    Modes such as L, P, RGBA and CMYK become RGB; transparent pixels become white.
    Raises FileNotFoundError for a missing file and ValueError for a file that does not decode
    or an image with zero width or height.
    """
    if image is None:
        raise ValueError("load_image got None: this sample is text-only; check sample.has_image first")
    if isinstance(image, (str, Path)):
        image = _decode_file(Path(image))
    elif not isinstance(image, Image.Image):
        raise TypeError(f"load_image takes a PIL image or a path, not {type(image).__name__}")
    _check_not_empty(image.size, "an in-memory image")
    rgb = _to_rgb(image)
    if size is not None:
        width, height = (size, size) if isinstance(size, int) else size
        rgb = rgb.resize((width, height), Image.BICUBIC)
    return rgb


def check_image_file(path: str | Path) -> Path:
    """`path` if it names an existing file whose header PIL recognises; pixels are not decoded.

    The cheap load-time check of the data sources: a missing file raises FileNotFoundError,
    a file that is not an image (or has zero width or height) raises ValueError.
    """
    path = Path(path)
    _check_exists(path)
    try:
        with Image.open(path) as image:
            size = image.size
    except _DECODE_ERRORS as error:
        raise _undecodable(path, error) from error
    _check_not_empty(size, str(path))
    return path


def _decode_file(path: Path) -> Image.Image:
    _check_exists(path)
    try:
        with Image.open(path) as image:
            image.load()
    except _DECODE_ERRORS as error:
        raise _undecodable(path, error) from error
    _check_not_empty(image.size, str(path))
    return image


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}; check the image folder the data source was "
                                f"given, or download the missing images")


def _check_not_empty(size: tuple[int, int], what: str) -> None:
    if size[0] == 0 or size[1] == 0:
        raise ValueError(f"{what} has zero size ({size[0]}x{size[1]}); replace the image or drop the sample")


def _undecodable(path: Path, error: BaseException) -> ValueError:
    return ValueError(f"cannot decode image {path} ({type(error).__name__}: {error}); the file is corrupt or "
                      f"not an image: re-download it or drop the sample")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENCY_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
