"""Decoder: image bytes -> an RGB Pillow image of bounded size, upright, first frame; bad files go to `errors`."""
from __future__ import annotations

import dataclasses
import hashlib
import io

import apache_beam as beam
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from transforms.internals import output_types
from transforms.metrics import StageMetrics
from transforms.read import DEFAULT_MAX_BYTES
from transforms.records import ERROR_OUTPUT, ERRORS, ImageInfo, exception_row

# Longer side of the decoded image. Models look at the central ~224 px square, so 512 keeps full detail for
# them while bounding memory: at most 512 x 512 x 3 bytes travel per image, whatever the file's size.
DEFAULT_MAX_SIDE = 512
# The shorter side a model reads when its backend does not say (Backend.image_side: EfficientNet-Lite0 resizes to
# 256 and crops 224). A JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale that still covers it in both
# directions, and no image is shrunk below it: a 384 px model is never fed an upscaled 256 px image.
DEFAULT_MODEL_SIDE = 256
# Longer side / shorter side kept around the center. A 4000x3 strip would otherwise become ~300,000 px wide
# when a model scales its shorter side up; what lies beyond this ratio is outside any center crop anyway.
MAX_ASPECT = 2.0
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if image.getexif().get(ImageOps.ExifTags.Base.Orientation) in _SWAPPING_ORIENTATIONS \
        else (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: 16-bit and float scaled down, transparency composited over white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" else max(float(pixels.max()), 1e-12)
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def bound_size(image: Image.Image, max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """Crops the center to at most MAX_ASPECT and shrinks the longer side to `max_side`."""
    width, height = image.size
    if max(width, height) > MAX_ASPECT * min(width, height):
        keep_w = min(width, int(MAX_ASPECT * height) or 1)
        keep_h = min(height, int(MAX_ASPECT * width) or 1)
        left, top = (width - keep_w) // 2, (height - keep_h) // 2
        image = image.crop((left, top, left + keep_w, top + keep_h))
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return image


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """The reader's and the decoder's bounds on one file: its bytes, its pixels, and the longer side it is
    scaled down to."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = Image.MAX_IMAGE_PIXELS
    max_side: int = DEFAULT_MAX_SIDE


def decode_image(data: bytes, max_pixels: int, max_side: int = DEFAULT_MAX_SIDE,
                 model_side: int = DEFAULT_MODEL_SIDE) -> tuple[Image.Image, int, int]:
    """(bounded RGB image, upright width, upright height) of the file's first frame; raises on any bad input.
    The longer side is at most `max_side`, or what keeps the shorter one at `model_side` where that is more."""
    try:
        opened = Image.open(io.BytesIO(data))  # Pillow itself refuses > 2x MAX_IMAGE_PIXELS here
    except UnidentifiedImageError:
        raise UnidentifiedImageError(f"not an image format Pillow can read (file starts with {data[:16]!r})") from None
    with opened as image:
        if image.width * image.height > max_pixels:
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} = {image.width * image.height} pixels exceeds the limit "
                f"of {max_pixels} (a possible decompression bomb)"
            )
        width, height = _upright_size(image)
        image.seek(0)
        # JPEG decodes straight at 1/2, 1/4 or 1/8 scale when that still covers what the model reads: a 1000 x 750
        # photo is decoded as 500 x 375, a quarter of the pixels, and needs no second resize to fit max_side.
        longest = max(max_side, int(MAX_ASPECT * model_side))
        side = min(longest, model_side)
        image.draft(None, (side, side))
        image.load()
        upright = ImageOps.exif_transpose(image)
        return bound_size(to_rgb(upright), longest), width, height


@output_types(tuple[ImageInfo, Image.Image], ERROR_OUTPUT)
class DecodeImages(beam.DoFn):
    """(uri, bytes) -> (ImageInfo, RGB image); anything Pillow cannot decode fully goes to `errors`."""

    def __init__(self, max_pixels: int = Image.MAX_IMAGE_PIXELS, max_side: int = DEFAULT_MAX_SIDE,
                 model_side: int = DEFAULT_MODEL_SIDE):
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.model_side = model_side

    def setup(self):
        # A truncated file must fail, never come out padded with grey, whatever another library set.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        self.metrics = StageMetrics("decode")

    def process(self, element: tuple[str, bytes]):
        uri, data = element
        try:
            with self.metrics.timed():
                if not data:
                    raise ValueError("file is empty")
                image, width, height = decode_image(data, self.max_pixels, self.max_side, self.model_side)
        except Exception as e:  # noqa: BLE001 - one bad image must never fail the job
            self.metrics.failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, exception_row(uri, "decode", e))
            return
        self.metrics.passed.inc()
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        yield ImageInfo(uri, hashlib.sha256(data).hexdigest(), width, height, md5), image
