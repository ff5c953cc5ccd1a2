"""Request bodies -> images (serve/decode.py), without Ray: refusals, and the same model input as vaegan-run's file
path for every format and mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vaegan.serve.decode import BadRequest, decode_image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_refusals_name_the_problem():
    with pytest.raises(BadRequest, match=r"^empty body") as e:
        decode_image(b"")
    assert e.value.status == 400
    with pytest.raises(BadRequest, match=r"^not an image in a supported format .*b'%PDF-1.4'"):
        decode_image(b"%PDF-1.4 not an image")
    gif = encode(Image.new("L", (8, 8)), "GIF")  # a real image, but not a format vaegan-run reads
    with pytest.raises(BadRequest, match=r"^not an image in a supported format \(PNG, JPEG, BMP, TIFF, WEBP\)"):
        decode_image(gif)
    png = encode(Image.new("L", (64, 64), 128), "PNG")
    with pytest.raises(BadRequest, match=r"^PNG cannot be decoded: OSError: image file is truncated") as e:
        decode_image(png[: len(png) - 20])
    assert e.value.status == 400


def test_pixel_limit_is_checked_from_the_header_before_decoding(monkeypatch):
    bomb = encode(Image.new("L", (4000, 3000)), "PNG")  # 12 MP from about 12 kB
    assert len(bomb) < 20_000
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(BadRequest, match=r"4000 x 3000 = 12000000 pixels, the limit is 4194304") as e:
        decode_image(bomb)
    assert e.value.status == 413 and not decoded  # refused before any pixel was decompressed
    with pytest.raises(BadRequest, match=r"the limit is 100\b"):
        decode_image(encode(Image.new("L", (11, 10)), "PNG"), max_pixels=100)


@pytest.fixture(scope="module")
def defense(tiny_artifacts):
    from vaegan.runtime import Defense

    with Defense.load(tiny_artifacts, threads=1) as d:
        yield d


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("LA", "PNG"),
                                      ("I;16", "PNG"), ("1", "BMP"), ("F", "TIFF"), ("CMYK", "JPEG"),
                                      ("RGB", "WEBP")])
def test_same_model_input_as_vaegan_run(defense, tmp_path, mode, fmt):
    """The service's path (decode from memory, then Defense.prepare) gives exactly vaegan-run's model input for the
    same file (io.load_image from disk), whatever the mode."""
    from vaegan.runtime.io import load_image

    yy, xx = np.mgrid[0:37, 0:45]
    base = Image.fromarray(((xx * 5 + yy * 3) % 256).astype(np.uint8), mode="L")  # 45 x 37: resized to 28 x 28
    im = base.convert(mode) if mode not in ("I;16", "F") else Image.fromarray(
        (np.asarray(base, dtype=np.float32) * (257.0 if mode == "I;16" else 1 / 255.0)).astype(
            np.uint16 if mode == "I;16" else np.float32))
    body = encode(im, fmt)
    path = tmp_path / f"frame.{fmt.lower()}"
    path.write_bytes(body)
    got = defense.prepare([decode_image(body)])
    want = load_image(path, defense.artifacts.preprocess)
    assert got.shape == (1, *want.shape)
    np.testing.assert_array_equal(got[0], want)
