"""Hostile inputs built on the fly (tests/test_hostile.py, benchmarks/bombs.py): crafted DICOM
structures and decompression bombs that stay small on disk and in the building process."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .test_dicom import _dataset


def dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def nested_sequences(depth: int) -> bytes:
    """`depth` sequences nested in one another (undefined lengths), as raw DICOM elements."""
    sequence = b"\x40\x00\x75\x02SQ\0\0\xff\xff\xff\xff"  # (0040,0275), undefined length
    item, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\0\0\0\0"
    sequence_end = b"\xfe\xff\xdd\xe0\0\0\0\0"
    return (sequence + item) * depth + (item_end + sequence_end) * depth


def _meta_end(raw: bytes) -> int:
    """Where a Part 10 file's meta group ends (its group length follows the preamble)."""
    return 132 + 12 + int.from_bytes(raw[140:144], "little")


def deflated_bomb(rows: int, cols: int, pixel_bytes: int) -> bytes:
    """A deflated DICOM whose header says rows x cols 16-bit and whose pixel data holds
    `pixel_bytes` zeros: compressed streaming, so the test never holds the inflated bytes."""
    ds = _dataset((rows, cols), bits=16)
    ds.PixelData = b"\0\0"
    plain = dicom_bytes(ds)
    body = plain[_meta_end(plain):plain.index(b"\xe0\x7f\x10\x00OW")]
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = dicom_bytes(ds)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [deflated[:_meta_end(deflated)], z.compress(body),
           z.compress(b"\xe0\x7f\x10\x00OW\0\0" + pixel_bytes.to_bytes(4, "little"))]
    zeros = bytes(2**22)
    for _ in range(pixel_bytes // len(zeros)):
        out.append(z.compress(zeros))
    out.append(z.compress(bytes(pixel_bytes % len(zeros))) + z.flush())
    return b"".join(out)


def jpeg_declaring(width: int, height: int, source: Path) -> bytes:
    """A small real JPEG whose SOF header is rewritten to declare width x height."""
    with Image.open(source) as img:
        buf = io.BytesIO()
        img.convert("L").resize((64, 64)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)
