"""DICOM pixel data -> 8-bit gray, with what bounds the cost of a hostile file: the image's
real size is checked before any pixel is decoded (Rows x Columns x frames x samples, and for
compressed transfer syntaxes the size the embedded JPEG / JPEG 2000 codestream declares), a
deflated data set is inflated only up to what an image under the limit can need, and the
display transform runs on a lookup table, not on a float copy of every pixel.

Headers are read with pydicom (and Pillow for codestreams), never by hand: they are the
parsers pydicom's own decoders trust.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..core.errors import ImageError

# The only DICOM tags read: the pixel data and what is needed to display it. Patient and
# study tags are never parsed, so they cannot reach a message, a warning, a log or an output.
TAGS = [
    "SpecificCharacterSet", "Modality", "SamplesPerPixel", "PhotometricInterpretation",
    "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PixelPaddingValue", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "RescaleIntercept", "RescaleSlope", "RescaleType", "ModalityLUTSequence",
    "VOILUTSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "FloatPixelData",
    "DoubleFloatPixelData", "PixelData"]

# A deflated data set may inflate to at most this many bytes per allowed pixel (16-bit RGB
# would need 6; X-rays are gray, 8 to 16 bits), plus room for the header.
INFLATE_BYTES_PER_PIXEL = 4
INFLATE_HEADER_BYTES = 16 * 2**20


def read(source: str | Path | BinaryIO, name: str, max_pixels: int):
    """The data set (display tags and pixel data only), its size checked against max_pixels;
    no pixel decoded yet."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(_inflated(source, name, max_pixels), force=True,
                             specific_tags=TAGS)
    except ImageError:
        raise
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as e:
        raise ImageError(f"{name}: not a readable DICOM file ({type(e).__name__})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(f"{name}: DICOM file holds no image (no pixel data)")
    _check_size(ds, name, max_pixels)
    return ds


def _inflated(source, name: str, max_pixels: int):
    """`source` itself, or for the Deflated Explicit VR Little Endian transfer syntax the same
    file inflated here (pydicom inflates it whole, however large: 195 KB can hold 200 MB of
    zeros), stopping as soon as it outgrows what an image of max_pixels needs."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset, read_preamble
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    own = isinstance(source, str | Path)
    fp = open(source, "rb") if own else source  # noqa: SIM115 - closed below
    start = fp.tell()
    try:
        if read_preamble(fp, True) is None:  # no 'DICM': cannot be deflated Part 10
            return source
        meta = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return source
        limit = INFLATE_BYTES_PER_PIXEL * max_pixels + INFLATE_HEADER_BYTES
        out = DicomBytesIO()
        out.write(b"\0" * 128 + b"DICM")
        file_meta = FileMetaDataset(meta)
        file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the inflated bytes are
        write_file_meta_info(out, file_meta, enforce_standard=False)
        inflater, pending, total = zlib.decompressobj(-zlib.MAX_WBITS), fp.read(), 0
        header_read = False
        while pending:
            chunk = inflater.decompress(pending, 2**22)
            pending = inflater.unconsumed_tail
            total += len(chunk)
            out.write(chunk)
            if not header_read:  # the first 4 MiB hold the header: the size it declares
                header_read = True  # bounds what may follow
                limit = min(limit, _pixel_bytes(out.getvalue(), name, max_pixels)
                            + INFLATE_HEADER_BYTES)
            if total > limit:
                raise ImageError(f"{name}: deflated DICOM inflates to more than "
                                 f"{limit // 2**20} MiB, more than its image of at most "
                                 f"{max_pixels:,} pixels needs (a decompression bomb)")
            if not chunk:
                break
        out.seek(0)
        return out
    except zlib.error:
        raise ImageError(f"{name}: corrupt deflated DICOM data") from None
    finally:
        if own:
            fp.close()
        else:
            fp.seek(start)


def _pixel_bytes(head: bytes, name: str, max_pixels: int) -> int:
    """Bytes of pixel data the header at the start of an inflated data set declares, its
    size checked against max_pixels; a large number when the header is not all there."""
    import pydicom
    from pydicom.filebase import DicomBytesIO

    try:
        ds = pydicom.dcmread(DicomBytesIO(head), force=True, stop_before_pixels=True,
                             specific_tags=["Rows", "Columns", "NumberOfFrames",
                                            "SamplesPerPixel", "BitsAllocated"])
        bits = int(ds.BitsAllocated)
    except Exception:  # noqa: BLE001 - cut short or odd: the general bound applies
        return INFLATE_BYTES_PER_PIXEL * max_pixels
    _check_size(ds, name, max_pixels, compressed=False)
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) \
        * int(ds.get("NumberOfFrames", 1) or 1) * max(1, -(-bits // 8))


def _check_size(ds, name: str, max_pixels: int, compressed: bool = True) -> None:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise ImageError(f"{name}: DICOM file lacks a valid image size") from None
    if min(rows, cols, frames, samples) < 1:
        raise ImageError(f"{name}: DICOM file lacks a valid image size ({cols}x{rows} pixels, "
                         f"{frames} frame(s), {samples} sample(s) per pixel)")
    if rows * cols * frames * samples > max_pixels:
        more = (f" x {frames} frames" if frames > 1 else "") + \
               (f" x {samples} samples" if samples > 1 else "")
        raise ImageError(f"{name}: image too large ({cols}x{rows} pixels{more}, "
                         f"limit {max_pixels})")
    if frames > 1:
        raise ImageError(f"{name}: multi-frame DICOM ({frames} frames) is not supported; "
                         f"export the single radiograph")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if compressed and syntax is not None and syntax.is_transfer_syntax \
            and syntax.is_encapsulated and "PixelData" in ds:
        size = _frame_size(ds.PixelData, name, max_pixels)
        if size is not None and size != (cols, rows):
            width, height = size
            raise ImageError(f"{name}: the compressed image is {width}x{height} pixels but "
                             f"the DICOM header says {cols}x{rows}; not decoded")


def _frame_size(pixel_data: bytes, name: str, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) the first frame's JPEG, JPEG-LS or JPEG 2000 codestream declares (the
    size its codec would allocate); RLE carries no size of its own and gets the header's."""
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(pixel_data, number_of_frames=1))
    except (StopIteration, ValueError, TypeError, KeyError, IndexError):
        raise ImageError(f"{name}: corrupt encapsulated DICOM pixel data") from None
    if frame[:2] == b"\xff\xd8":  # JPEG or JPEG-LS: pydicom's own SOF parser (Pillow's
        from pydicom.pixels.utils import _get_jpg_parameters  # refuses 12/16-bit and JPEG-LS)

        info = _get_jpg_parameters(frame)
        if info.get("width") is not None:
            size = info["width"], info["height"]
        else:
            raise ImageError(f"{name}: unreadable JPEG header in the DICOM pixel data")
    elif frame[:2] == b"\xff\x4f" or frame[4:8] == b"jP  ":  # JPEG 2000 codestream / JP2
        try:
            with Image.open(io.BytesIO(frame)) as img:
                size = img.size
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: image too large (the compressed image declares more "
                             f"than {2 * Image.MAX_IMAGE_PIXELS:,} pixels)") from None
        except (OSError, SyntaxError, ValueError):
            raise ImageError(f"{name}: unreadable JPEG 2000 header in the DICOM pixel "
                             f"data") from None
    else:  # RLE carries no size (its decoder allocates what the header says); others
        return None  # (MPEG, ...) cannot be decoded here and get their own error
    if size[0] * size[1] > max_pixels:
        raise ImageError(f"{name}: image too large (the compressed image is "
                         f"{size[0]}x{size[1]} pixels, limit {max_pixels})")
    return size


def to_gray8(source: str | Path | BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """One DICOM frame -> 8-bit gray, displayed as a radiologist's viewer would: Modality LUT
    (rescale slope/intercept), then VOI LUT or window, then MONOCHROME1 inverted."""
    ds = read(source, name, max_pixels)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown")
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        if syntax is not None and syntax.is_transfer_syntax and syntax.is_compressed:
            raise ImageError(f"{name}: cannot decode DICOM transfer syntax {syntax_name} "
                             f"({syntax}) with the installed pixel data handlers") from None
        raise ImageError(f"{name}: cannot decode DICOM pixel data ({type(e).__name__})") from None
    except (ValueError, AttributeError, TypeError, KeyError, OSError, EOFError) as e:
        raise ImageError(f"{name}: corrupt DICOM pixel data ({syntax_name}, "
                         f"{type(e).__name__})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[2] == 3:  # colour (RGB after YBR conversion): no LUTs
        return Image.fromarray(arr.astype(np.uint8), "RGB").convert("L")
    if arr.ndim != 2 or arr.dtype == bool:
        raise ImageError(f"{name}: unexpected DICOM pixel array ({arr.dtype}, shape "
                         f"{arr.shape})")
    try:
        return Image.fromarray(display(arr, ds, photometric))
    except (ValueError, TypeError, AttributeError, KeyError, IndexError,
            NotImplementedError) as e:
        raise ImageError(f"{name}: invalid DICOM display settings (rescale, window or VOI "
                         f"LUT: {type(e).__name__})") from None


def display(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    """Stored values (H, W) -> displayed uint8 (H, W). Integer images of up to 16 bits go
    through a table over their value range, computed exactly as the per-pixel path would
    (every step is elementwise), so memory stays at a few bytes per pixel."""
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2 and arr.size > 65536:
        index, first = _offsets(arr)
        values = np.arange(first, first + int(index.max()) + 1).astype(arr.dtype)
        present = np.zeros(len(values), bool)
        present[index] = True
        return _display_values(values, ds, photometric, present)[index]
    return _display_values(arr, ds, photometric, None)


def _offsets(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """(arr - arr.min() as unsigned, arr.min()) without a wider copy of the image."""
    unsigned = np.dtype(f"u{arr.dtype.itemsize}")
    if arr.dtype.kind == "i":  # flip the sign bit: order-preserving map to unsigned
        u = arr.view(unsigned) ^ unsigned.type(1 << (8 * arr.dtype.itemsize - 1))
        shift = 1 << (8 * arr.dtype.itemsize - 1)
    else:
        u, shift = arr.copy(), 0
    low = u.min()
    u -= low
    return u, int(low) - shift


def _display_values(a: np.ndarray, ds, photometric: str, present) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    with np.errstate(over="ignore", invalid="ignore"):
        a = apply_modality_lut(a, ds).astype(np.float64)
        if ds.get("VOILUTSequence"):
            a = apply_voi_lut(np.rint(a).astype(np.int64), ds).astype(np.float64)
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            a = apply_windowing(a, ds)
            lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds)  # the output range
        elif int(ds.BitsStored) == 8 and "RescaleSlope" not in ds:
            lo, hi = 0.0, 255.0  # 8-bit values are already display values
        else:  # no display transform stored: stretch over the image's own range, as viewers do
            seen = a if present is None else a[present]
            lo, hi = float(seen.min()), float(seen.max())
    a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    gray = np.round(np.clip(a, 0, 255)).astype(np.uint8)
    if photometric == "MONOCHROME1":  # 0 is white: invert to the usual MONOCHROME2
        gray = 255 - gray
    return gray


def declared_pixels(fp: BinaryIO) -> int | None:
    """Rows x Columns x frames x samples from the header, or None for a deflated data set
    (its header is only readable once inflated). Raises what pydicom raises on a bad file."""
    import pydicom
    from pydicom.filereader import read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    start = fp.tell()
    read_preamble(fp, True)
    meta = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
    if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return None
    fp.seek(start)
    ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True,
                         specific_tags=["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"])
    return (int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.get("SamplesPerPixel", 1) or 1))
