"""Decoding hostile and unusual files: every one either becomes a bounded upright RGB image or a clear error."""
import numpy as np
import pytest
from PIL import Image

from tests.conftest import hostile_files
from transforms.decode import DEFAULT_MAX_SIDE, decode_image

BAD = {"empty.jpg": "UnidentifiedImageError", "truncated.jpg": "OSError", "random.jpg": "UnidentifiedImageError",
       "page.jpg": "UnidentifiedImageError", "bomb.png": "DecompressionBombError"}


@pytest.fixture(scope="module")
def files(photos):
    return hostile_files(photos / "chelsea.jpg")


def test_every_hostile_file_is_classified_as_expected(files):
    assert {name for name, (_, ok) in files.items() if not ok} == set(BAD)
    for name, (data, ok) in files.items():
        if ok:
            image, width, height = decode_image(data, Image.MAX_IMAGE_PIXELS)
            assert image.mode == "RGB" and max(image.size) <= DEFAULT_MAX_SIDE, name
        else:
            with pytest.raises(Exception) as caught:
                decode_image(data, Image.MAX_IMAGE_PIXELS)
            assert type(caught.value).__name__ == BAD[name], name


def test_html_named_jpg_says_what_it_starts_with(files):
    with pytest.raises(Exception, match="DOCTYPE"):
        decode_image(files["page.jpg"][0], Image.MAX_IMAGE_PIXELS)


def test_exif_orientation_is_applied_and_reported_upright(files):
    image, width, height = decode_image(files["exif_rotated.jpg"][0], Image.MAX_IMAGE_PIXELS)
    assert (width, height) == (300, 451) and image.size == (300, 451)


def test_sixteen_bit_grayscale_keeps_its_brightness(files):
    gray8, _, _ = decode_image(files["gray.png"][0], Image.MAX_IMAGE_PIXELS)
    gray16, _, _ = decode_image(files["gray16.png"][0], Image.MAX_IMAGE_PIXELS)
    assert abs(np.asarray(gray8, float).mean() - np.asarray(gray16, float).mean()) < 1.0


def test_transparency_is_composited_over_white(files):
    image, _, _ = decode_image(files["palette_transparent.png"][0], Image.MAX_IMAGE_PIXELS)
    assert (np.asarray(image) == 255).all(axis=2).any()  # palette index 0 turned white where it was used


def test_animation_gives_its_first_frame(files, photos):
    first, _, _ = decode_image(files["animated.gif"][0], Image.MAX_IMAGE_PIXELS)
    original = np.asarray(Image.open(photos / "chelsea.jpg").convert("RGB"), float)
    flipped = original[:, ::-1]
    frame = np.asarray(first, float)
    assert np.abs(frame - original).mean() < np.abs(frame - flipped).mean()


def test_extreme_aspect_ratio_stays_small(files):
    image, width, height = decode_image(files["strip_4000x3.png"][0], Image.MAX_IMAGE_PIXELS)
    assert (width, height) == (4000, 3)
    assert image.width * image.height <= 2 * 3 * 3


def test_large_photo_is_shrunk_to_the_bound():
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (3000, 4000, 3), dtype=np.uint8))
    import io
    buffer = io.BytesIO()
    big.save(buffer, "JPEG")
    image, width, height = decode_image(buffer.getvalue(), Image.MAX_IMAGE_PIXELS)
    # Decoded at 1/8 scale: within the 512 px bound, and still covering the 256 px the models read.
    assert (width, height) == (4000, 3000) and image.size == (500, 375)
    png = io.BytesIO()
    big.save(png, "PNG")  # no DCT scaling for PNG: shrunk to the bound itself
    assert decode_image(png.getvalue(), Image.MAX_IMAGE_PIXELS)[0].size == (512, 384)


def test_pixel_limit_is_enforced_below_pillows_own(files):
    with pytest.raises(Image.DecompressionBombError, match="exceeds the limit of 100000"):
        decode_image(files["cmyk.jpg"][0], max_pixels=100_000)
