"""Request bodies -> decoded images, in memory (nothing touches the filesystem).

``decode_image(body, max_pixels)`` opens the bytes with Pillow, restricted to the formats ``vaegan-run`` reads, checks
the pixel count from the header *before* any pixel data is decompressed (a small file that expands to a huge image
is refused, not decoded), then decodes fully (a truncated image is an error, not a partial one) and returns the
loaded Pillow image as it came (any mode). Everything after that (grey conversion, scaling, resize) is the runtime's
one preprocessing function, ``vaegan.runtime.io.to_model_input``, applied by the replica's ``Defense``: the same
call ``vaegan-run`` makes on an image file.

Every refusal is a ``BadRequest`` carrying an HTTP status and a one-line message.
"""

from __future__ import annotations

import io
import warnings

# Pillow format names of the extensions vaegan-run accepts (runtime/io.py IMAGE_EXTS)
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
DEFAULT_MAX_PIXELS = 2048 * 2048          # a 1080p camera frame fits; decoded RGBA at most 16 MiB
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


class BadRequest(ValueError):
    """A request the service refuses: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def decode_image(body: bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """One encoded image (``FORMATS``) -> the loaded Pillow image (module docstring); ``BadRequest`` otherwise."""
    from PIL import Image, UnidentifiedImageError

    if not body:
        raise BadRequest(400, "empty body: POST one encoded image (PNG, JPEG, BMP, TIFF or WebP)")
    with warnings.catch_warnings():
        # Pillow's own bomb guard warns above its MAX_IMAGE_PIXELS; the service's limit is checked below instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(body), formats=FORMATS)
        except UnidentifiedImageError:
            raise BadRequest(400, f"not an image in a supported format ({', '.join(FORMATS)}): "
                                  f"{len(body)} bytes starting {body[:8]!r}") from None
        except Image.DecompressionBombError as e:
            raise BadRequest(413, f"image too large: {_one_line(e)}") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise BadRequest(400, f"unreadable image header: {_one_line(e)}") from None
        w, h = im.size
        if w * h > max_pixels:
            raise BadRequest(413, f"image too large: {w} x {h} = {w * h} pixels, the limit is {max_pixels} "
                                  f"(decompression bomb guard; the service's --max-pixels)")
        if w == 0 or h == 0:
            raise BadRequest(400, f"image has no pixels ({w} x {h})")
        try:
            im.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # truncated or corrupt pixel data ("image file is truncated", broken deflate stream, ...)
            raise BadRequest(400, f"{im.format or 'image'} cannot be decoded: {_one_line(e)}") from None
        return im
