"""Reading encoded image files for the loaders, with errors that name the file.

Both backends read a file's bytes here and learn its size from the header (Pillow parses only the header; no
pixels are decoded), because the augmentation plan needs the size before decoding. A file that cannot be read or
whose header is not an image's raises :class:`CorruptImageError` — a ``ValueError`` naming the file — or, with
``on_error="skip"``, is skipped and counted by the loader. Corruption that only shows while decoding (a truncated
entropy-coded stream) is caught by each backend's decoder and mapped back to the file the same way.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

ON_ERROR = ("raise", "skip")


class CorruptImageError(ValueError):
    """An image file that cannot be read or decoded; ``path`` names it."""

    def __init__(self, path: str, reason: str | None = None):
        if reason is None:
            # One argument: a finished message. DataLoader re-raises a worker's exception as
            # ``type(message_with_worker_traceback)``; accepting that keeps the type (and the file name in the text).
            super().__init__(path)
            self.path, self.reason = None, path
            return
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason


def read_encoded(path: str) -> np.ndarray:
    """The file's bytes as a 1-D uint8 array (what DALI's decoders and torchvision's ``decode_image`` take)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except OSError as error:
        raise CorruptImageError(path, f"unreadable ({error.strerror or error})") from None
    if not data:
        raise CorruptImageError(path, "empty file")
    return np.frombuffer(data, dtype=np.uint8)


# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic variants): their segment
# holds the frame size. 0xC4 (DHT), 0xC8 (JPG extension) and 0xCC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments to the first SOFn: O(markers) byte reads, ~50× cheaper than Pillow's open,
    which matters when one Python thread feeds thousands of images a second. None if the walk fails."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # TEM, RSTn: no length field
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _JPEG_SOF:
            if pos + 9 > end:
                return None
            return (data[pos + 5] << 8) | data[pos + 6], (data[pos + 7] << 8) | data[pos + 8]
        if marker in (0xD9, 0xDA) or length < 2:  # EOI or start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _check_jpeg_complete(raw: bytes, path: str) -> None:
    """A JPEG cut short (interrupted download or copy) has no end-of-image marker after its scan data.

    Entropy-coded data never contains FF D9 (an FF byte there is always followed by 00 or a restart marker), so
    "an FF D9 after the first start-of-scan" is exact; an EXIF thumbnail's own FF D9 lies before the main scan.
    Checked up front because decoders disagree on such files: libjpeg-turbo (DALI CPU, torchvision) fails,
    a GPU decoder may return the decoded part. Trailing bytes after the marker are allowed, as every decoder
    allows them.
    """
    scan = raw.find(b"\xff\xda")
    if scan < 0 or raw.rfind(b"\xff\xd9") < scan:
        raise CorruptImageError(path, "truncated JPEG (no end-of-image marker after the scan data)")


def encoded_size(data: np.ndarray, path: str) -> tuple[int, int]:
    """(height, width) from the image header, without decoding pixels (EXIF orientation is not applied,
    matching both decoders as configured: the stored pixel grid is what gets decoded).

    JPEG and PNG headers are parsed directly; other formats (and JPEGs the fast walk cannot follow) go through
    Pillow's lazy ``Image.open``, which also reads only the header. JPEGs are also checked for truncation
    (:func:`_check_jpeg_complete`), so a cut file fails the same way on every backend and decoder.
    """
    raw = data.base if isinstance(data.base, bytes) else data.tobytes()  # read_encoded's bytes: no copy
    size = None
    if raw[:2] == b"\xff\xd8":
        size = _jpeg_size(raw)
        _check_jpeg_complete(raw, path)
    elif raw[:8] == _PNG_SIGNATURE and len(raw) >= 24 and raw[12:16] == b"IHDR":
        size = int.from_bytes(raw[20:24], "big"), int.from_bytes(raw[16:20], "big")
    if size is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning: size is all we read
                with Image.open(io.BytesIO(raw)) as image:
                    if image.format not in ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM"):
                        raise CorruptImageError(path, f"unsupported image format {image.format}")
                    width, height = image.size
                    size = height, width
        except CorruptImageError:
            raise
        except Exception as error:  # Pillow raises several types (UnidentifiedImageError, SyntaxError, ...)
            raise CorruptImageError(path, f"not a readable image header ({error})") from None
    height, width = size
    if height < 1 or width < 1:
        raise CorruptImageError(path, f"empty image {height}×{width}")
    return height, width


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}; expected one of {ON_ERROR}")
    return on_error
