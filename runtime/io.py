"""Frame sources, the prefetch queue, and THE preprocessing function.

Preprocessing lives in exactly one place, ``to_model_input``: every frame (any file format, size, colour mode, or
a decoded video frame) becomes one ``C x H x W`` float32 array in [0, 1] as the manifest's ``preprocess`` says
(its image contract, ``vaegan.runtime.contract``; 1 x 28 x 28 for the shipped Fashion-MNIST weights):

1. 16-bit / 32-bit integer images are scaled by 1/65535 and float images clipped to [0, 1] (and repeated into
   three planes for a 3-channel contract); for 1 channel, palette, RGB(A), CMYK, LA... images are converted by
   Pillow to 8-bit grayscale ("L", ITU-R 601-2 luma; alpha is dropped), for 3 channels to "RGB" (RGB stays RGB,
   grayscale is repeated, alpha is dropped), 1/255.
2. Each plane is resized to W x H (aspect ratio not kept: frames are expected to be crops of one item).
   Downscaling uses a box (area-average) filter, upscaling bilinear interpolation, both on the float image.
3. Values are clipped to [0, 1]; dtype float32.

Sources yield ``Frame`` records (``source``: a stable id used by predictions.jsonl and --resume, for files the
canonical path ``canonical_path`` gives, so a relative and an absolute spelling of one input are one source;
``relname``: where the purified PNG goes under OUT/purified/, ``purified_name``; ``array`` or ``error``). A bad file
never stops a source: it becomes a Frame with ``error`` set; so do a file that is not a regular file (a FIFO, a
device, a socket: never opened) and an image whose header says it has more than ``max_pixels`` pixels (never
decoded).
"""

from __future__ import annotations

import glob
import os
import queue
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, RuntimeUsageError
from .limits import DEFAULT_MAX_PIXELS

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
OPENCV_HINT = "reading video or a camera needs OpenCV: pip install 'vaegan[video]' (opencv-python-headless)"


# -- preprocessing (the one place) -----------------------------------------------------------------------------

def to_model_input(image, preprocess: dict) -> np.ndarray:
    """A Pillow image -> ``channels x height x width`` float32 in [0, 1] (see the module docstring)."""
    from PIL import Image

    h, w = int(preprocess["height"]), int(preprocess["width"])
    c = int(preprocess.get("channels", 1))
    if c not in (1, 3):
        raise ValueError(f"preprocess channels={c}: only 1 (grayscale) or 3 (RGB) channels are implemented")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(image, dtype=np.float32) / np.float32(65535.0)
        planes = [np.clip(a, 0, 1)] * c
    elif image.mode == "F":
        planes = [np.clip(np.asarray(image, dtype=np.float32), 0, 1)] * c
    elif c == 1:
        planes = [np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255.0)]
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0)
        planes = [rgb[..., k] for k in range(3)]
    out = np.empty((c, h, w), np.float32)
    for k, plane in enumerate(planes):
        img = Image.fromarray(np.ascontiguousarray(plane), mode="F")
        if img.size != (w, h):
            down = img.size[0] >= w and img.size[1] >= h
            img = img.resize((w, h), Image.Resampling.BOX if down else Image.Resampling.BILINEAR)
        out[k] = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    return out


def array_to_model_input(a: np.ndarray, preprocess: dict, bgr: bool = False) -> np.ndarray:
    """A decoded frame as a numpy array -> ``to_model_input``: uint8 ``H x W`` (grayscale) or ``H x W x C`` with C
    1 (grayscale), 3 (RGB; BGR with ``bgr``, as OpenCV decodes) or 4 (RGBA / BGRA), any size. Anything else is an
    ``InputError`` naming what came: other dtypes are not guessed at (a float array's range is unknown)."""
    from PIL import Image

    if not isinstance(a, np.ndarray):
        raise InputError(f"a frame is a {type(a).__name__}: expected a uint8 numpy array (H x W or H x W x C)")
    if a.dtype != np.uint8:
        raise InputError(f"a frame has dtype {a.dtype.name}: expected uint8 H x W or H x W x C (already in the "
                         f"contract: one float32 N x C x H x W array)")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise InputError(f"a uint8 frame of shape {list(a.shape)}: expected H x W or H x W x C with C 1, 3 or 4")
    if a.size == 0:
        raise InputError(f"a uint8 frame of shape {list(a.shape)} is empty")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and bgr:
        a = a[..., [2, 1, 0, 3][:a.shape[2]]]
    return to_model_input(Image.fromarray(np.ascontiguousarray(a)), preprocess)


def from_model_output(x: np.ndarray):
    """C x H x W float in [0, 1] -> 8-bit Pillow image in the contract's mode ("L" for 1 channel, "RGB" for 3)."""
    from PIL import Image

    a = np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)
    if a.shape[0] == 1:
        return Image.fromarray(a[0], mode="L")
    return Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)), mode="RGB")


class TooLarge(ValueError):
    """An image whose header gives more pixels than the run's limit."""


def load_image(path: Path, preprocess: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file fully (a truncated file is an error, not a partial image) and preprocess it; an image
    of more than ``max_pixels`` pixels (its header's size, read before any pixel is decoded) is ``TooLarge``."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        if w * h > max_pixels:
            raise TooLarge(f"image is {w} x {h} = {w * h / 1e6:.1f} Mpx, above the limit of {max_pixels / 1e6:g} Mpx "
                           f"(--max-pixels)")
        im.load()
        return to_model_input(im, preprocess)


# -- frames and sources ----------------------------------------------------------------------------------------

@dataclass
class Frame:
    source: str
    relname: str
    array: np.ndarray | None = None
    error: str | None = None
    t_ready: float = 0.0  # perf_counter() when decoding finished


def _error_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def not_regular(st: os.stat_result) -> str | None:
    """None for a regular file, else the error text (opening a FIFO or a device for reading can block forever)."""
    if stat.S_ISREG(st.st_mode):
        return None
    kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
    return f"not a regular file ({kind}); not opened"


def image_frame(path: Path, source: str, relname: str, preprocess: dict,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Frame:
    from PIL import Image

    try:
        st = os.stat(path)  # follows symlinks; opens nothing
    except OSError as e:
        return Frame(source, relname, error=_error_text(e))
    if not_regular(st):
        return Frame(source, relname, error=not_regular(st))
    if path.suffix.lower() not in IMAGE_EXTS:
        return Frame(source, relname, error=f"not an image file (extension {path.suffix or 'none'!r}; "
                                            f"supported: {' '.join(IMAGE_EXTS)})")
    try:
        if st.st_size == 0:
            return Frame(source, relname, error="empty file (0 bytes)")
        return Frame(source, relname, array=load_image(path, preprocess, max_pixels))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # Pillow: UnidentifiedImageError (an OSError) for corrupt / non-image data, OSError "image file is
        # truncated", SyntaxError from some plugins on malformed headers; OSError for unreadable paths.
        return Frame(source, relname, error=_error_text(e))


_DIR_PNG = re.compile(r"\.png_*$", re.IGNORECASE)


def purified_name(rel: str) -> str:
    """Relative name of the purified PNG, a one-to-one map of the input's relative path: ``.png`` appended to the
    file name (``a/b.jpg`` -> ``a/b.jpg.png``, ``a/b.png`` -> ``a/b.png.png``, ``a/b.jpg.png`` ->
    ``a/b.jpg.png.png``), and one ``_`` to each folder name that ends in ``.png`` followed by zero or more ``_``
    (``x.png/c.jpg`` -> ``x.png_/c.jpg.png``), so no folder of the output tree ends in ``.png`` and no file name
    can clash with a folder name. Distinct inputs never share an output (up to letter case on a case-insensitive
    file system)."""
    *dirs, name = rel.split("/")
    return "/".join([d + "_" if _DIR_PNG.search(d) else d for d in dirs] + [name + ".png"])


def canonical_path(p) -> str:
    """The ``source`` id of a file: absolute, with the folders' symlinks, ``.`` and ``..`` resolved, the file's own
    name kept (a symlinked frame is recorded under its own name)."""
    p = os.fspath(p)
    head, name = os.path.split(os.path.abspath(p))
    return os.path.join(os.path.realpath(head), name)


class Source:
    """Iterable of ``Frame``; ``total`` is the frame count when known up front (for the progress bar). A ``live``
    source (a camera) produces frames in real time: ``vaegan-run`` then purifies whatever has arrived instead of
    waiting for a full batch, so a frame's latency is never held hostage by the batch size."""

    total: int | None = None
    live: bool = False

    def __iter__(self):
        raise NotImplementedError


class FileListSource(Source):
    """Image files: a folder (sorted, optionally recursive), a glob pattern, or one file."""

    def __init__(self, files: list[tuple[Path, str]], preprocess: dict, errors: list[tuple[Path, str, str]] = (),
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.files = files
        self.errors = list(errors)  # (path, relname, message): entries that could not even be listed
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.total = len(files) + len(self.errors)

    def __iter__(self):
        for path, rel, msg in self.errors:
            yield Frame(canonical_path(path), purified_name(rel), error=msg)
        for path, rel in self.files:
            yield image_frame(path, canonical_path(path), purified_name(rel), self.preprocess, self.max_pixels)


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def list_folder(root: Path, recursive: bool, exclude: Path | None = None):
    """Every non-hidden entry of ``root`` that is not a folder (sorted by relative path); with ``recursive``, of
    its subfolders too. Non-image files are kept: they become error records. Dangling links are kept too.
    Returns (files, errors): errors are (path, relname, message) for subfolders that cannot be listed."""
    out, errors = [], []

    def onerror(e: OSError):
        p = Path(e.filename)
        errors.append((p, p.relative_to(root).as_posix(), f"cannot list folder: {_error_text(e)}"))

    walker = os.walk(root, onerror=onerror) if recursive else [(str(root), [], os.listdir(root))]
    for dirpath, dirnames, filenames in walker:
        d = Path(dirpath)
        if exclude is not None and (d.resolve() == exclude or exclude in d.resolve().parents):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in filenames:
            p = d / name
            if not recursive and p.is_dir():
                continue
            rel = p.relative_to(root)
            if not _is_hidden(rel):
                out.append((p, rel.as_posix()))
    out.sort(key=lambda t: t[1])
    return out, errors


class VideoSource(Source):
    """Frames of a video file or a camera (OpenCV). A video with no decodable frame yields one error record."""

    def __init__(self, target, source: str, relbase: str, preprocess: dict, max_frames: int | None = None):
        self.target = target  # path string or camera index
        self.live = isinstance(target, int)
        self.source = source
        self.relbase = relbase
        self.preprocess = preprocess
        self.max_frames = max_frames

    def __iter__(self):
        cv2 = import_cv2()
        cap = cv2.VideoCapture(self.target)
        try:
            if not cap.isOpened():
                yield Frame(self.source, self.relbase, error=f"OpenCV cannot open {self.source}")
                return
            i = 0
            while self.max_frames is None or i < self.max_frames:
                ok, bgr = cap.read()
                if not ok:
                    break
                src, rel = f"{self.source}#frame={i}", f"{self.relbase}/frame_{i:06d}.png"
                try:
                    yield Frame(src, rel, array=array_to_model_input(bgr, self.preprocess, bgr=True))
                except (ValueError, TypeError) as e:
                    yield Frame(src, rel, error=_error_text(e))
                i += 1
            if i == 0:
                yield Frame(self.source, self.relbase, error="video has no decodable frames (0 frames)")
        finally:
            cap.release()


def import_cv2():
    try:
        import cv2
    except ImportError:
        raise RuntimeUsageError(OPENCV_HINT) from None
    return cv2


def open_source(input_: str, preprocess: dict, recursive: bool = False, exclude: Path | None = None,
                max_frames: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Source:
    """``input_``: a folder, an image file, a glob pattern, a video file, or a camera index (digits). A path that
    is neither a folder nor a regular file (a FIFO, a device) is one error record, never opened."""
    p = Path(input_)
    if input_.isdigit() and not p.exists():
        import_cv2()
        return VideoSource(int(input_), f"camera:{input_}", f"camera_{input_}", preprocess, max_frames)
    if p.is_dir():
        try:
            files, errors = list_folder(p, recursive, exclude=exclude.resolve() if exclude else None)
        except OSError as e:
            raise RuntimeUsageError(f"{p}: cannot list the folder ({_error_text(e)})") from None
        return FileListSource(files, preprocess, errors, max_pixels)
    if p.suffix.lower() in VIDEO_EXTS and p.is_file():
        import_cv2()
        return VideoSource(str(p), canonical_path(p), p.name, preprocess, max_frames)
    if p.exists() or p.is_symlink():
        return FileListSource([(p, p.name)], preprocess, max_pixels=max_pixels)
    if glob.has_magic(input_):
        matches = sorted(glob.glob(input_, recursive=True))
        base = Path(os.path.commonpath(matches)) if matches else Path(".")
        if len(matches) == 1:
            base = Path(matches[0]).parent
        files = [(Path(m), Path(os.path.relpath(m, base)).as_posix()) for m in matches if not Path(m).is_dir()]
        if not files:
            raise RuntimeUsageError(f"{input_}: the pattern matches no file")
        return FileListSource(files, preprocess, max_pixels=max_pixels)
    raise RuntimeUsageError(f"{input_}: no such file, folder, glob match or camera index")


# -- prefetch --------------------------------------------------------------------------------------------------

class _End:
    pass


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher:
    """Iterates ``source`` in a reader thread, at most ``depth`` frames ahead (a bounded queue, so memory stays
    flat however long the stream). An exception in the reader is re-raised in the consumer. ``close()`` (or
    leaving the ``with`` block) stops the reader."""

    def __init__(self, source, depth: int = 64):
        import time

        self._time = time.perf_counter
        self._source = source
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vaegan-frame-reader", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for frame in self._source:
                frame.t_ready = self._time()
                if not self._put(frame):
                    return
            self._put(_End())
        except BaseException as e:  # forwarded to the consumer, which re-raises it
            self._put(_Failed(e))

    def __iter__(self):
        while True:
            item = self._q.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item

    def waiting(self) -> bool:
        """True when a decoded frame (or the end of the stream) is already queued."""
        return not self._q.empty()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
