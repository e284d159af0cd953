"""Reading and writing images the way the evaluation protocols need them.

* :func:`read_image` -- any PNG/JPEG/BMP/TIFF/WebP/PPM as float32 ``HxWx3`` in [0, 1]:

  - EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so phone photos come out upright.
  - grayscale (``L``, ``1``, 16-bit ``I;16``) is replicated to three channels;
  - an alpha channel (RGBA, LA, palette transparency) is **dropped**, keeping the stored colour values, as
    MATLAB's ``imread`` and OpenCV do (the metrics must see the same pixels);
  - palette images are expanded; CMYK / YCbCr / LAB JPEGs and TIFFs are converted to RGB by Pillow;
  - 8-bit values are divided by 255, 16-bit ones by 65535. Pillow decodes 16-bit *colour* PNGs to 8 bits, so
    those are decoded here (:func:`_decode_png16`, exact 16-bit values); 16-bit colour and float TIFFs are
    read with ``tifffile`` when it is installed (float data is clipped to [0, 1]);
  - an unreadable, truncated or corrupt file raises :class:`ImageReadError` whose message names the file;
    so does compressed data that inflates beyond the size the header declares (decompression bombs: inflation
    stops at that size) and an image above Pillow's pixel limit (``PIL.Image.MAX_IMAGE_PIXELS``).

* :func:`read_uint8_rgb` -- the exact 8-bit values (what MATLAB ``imread`` returns for 8-bit files) as uint8
  ``HxWx3``, for the metrics. Same channel handling (gray replicated, alpha dropped, EXIF applied); 16-bit
  files are reduced with ``round(v / 257)`` (MATLAB ``im2uint8``). Note that MATLAB's scripts would score a
  *grayscale* file on its gray values directly, not on rgb2ycbcr of the replicated gray; the benchmarks are
  RGB so this does not arise there.

* :func:`read_encoded_rgb8` -- an 8-bit image as encoded RGB bytes, for the datasets: an 8-bit RGB PNG/JPEG
  file's own bytes, anything else re-encoded as PNG (same channel rules; pixels as stored, no EXIF rotation).

* :func:`write_png` -- clamp to [0, 1], multiply by 255, **round** (half up; truncation costs 0.1-0.2 dB near
  40 dB), save an 8-bit RGB PNG atomically (temporary file + rename). :func:`encode_png`: the PNG bytes.

* :func:`list_images` -- image files of a folder by extension (:data:`IMAGE_EXTENSIONS`), in natural order
  (:func:`natural_key`: ``2.png`` before ``10.png``). The datasets, the inference and the scoring CLIs all
  list folders with it.
* :func:`check_no_overwrite` -- refuses output paths that are the same files as inputs;
  :func:`prepare_output_dir` creates an output folder and proves it writable.
"""
from __future__ import annotations

import io
import os
import re
import struct
import tempfile
import zlib
from typing import Iterable, List, Sequence, Tuple

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageReadError(OSError):
  """An image file could not be read (missing, not an image, truncated, unsupported); names the file."""


class ImageWriteError(OSError):
  """An image could not be written, or writing it would overwrite an input; names the file."""


# ----------------------------------------------------------------------------------------------------------
# Listing
# ----------------------------------------------------------------------------------------------------------


def natural_key(name: str):
  """Sort key treating digit runs as numbers: ``img2.png`` < ``img10.png``; case-insensitive otherwise."""
  parts = re.split(r"(\d+)", name)
  return [(0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p != ""]


def is_image_file(path: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
  """True for a regular, non-hidden file whose extension (case-insensitive) is in ``extensions``."""
  base = os.path.basename(path)
  return (not base.startswith(".") and os.path.isfile(path)
          and os.path.splitext(base)[1].lower() in tuple(e.lower() for e in extensions))


def list_images(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
  """Paths of the image files directly inside ``folder``, sorted naturally by file name."""
  if not os.path.isdir(folder):
    raise ImageReadError(f"{folder}: not a directory")
  names = [n for n in os.listdir(folder) if is_image_file(os.path.join(folder, n), extensions)]
  return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


# ----------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
  """Applies EXIF ``orientation`` (1..8) to an ``HxWxC`` array like ``PIL.ImageOps.exif_transpose``."""
  ops = {
      2: lambda a: a[:, ::-1],                       # FLIP_LEFT_RIGHT
      3: lambda a: a[::-1, ::-1],                    # ROTATE_180
      4: lambda a: a[::-1, :],                       # FLIP_TOP_BOTTOM
      5: lambda a: np.swapaxes(a, 0, 1),             # TRANSPOSE
      6: lambda a: np.rot90(a, -1),                  # ROTATE_270 (clockwise quarter turn)
      7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),  # TRANSVERSE
      8: lambda a: np.rot90(a, 1),                   # ROTATE_90 (counter-clockwise)
  }
  op = ops.get(int(orientation or 1))
  return np.ascontiguousarray(op(arr)) if op else arr


def _paeth(a, b, c):
  pa = np.abs(b - c)
  pb = np.abs(a - c)
  pc = np.abs(a + b - 2 * c)
  return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _png_unfilter(data: np.ndarray, height: int, width: int, bpp: int) -> np.ndarray:
  """Reverses PNG row filters (types 0-4) of ``data`` (``height`` rows of 1 + width*bpp bytes).

  Each pixel depends on its left, upper and upper-left neighbours, so anti-diagonals are independent:
  the loop runs over H + W - 1 diagonals, vectorised along each.
  """
  rows = data.reshape(height, 1 + width * bpp)
  ftype = rows[:, 0].astype(np.int32)
  if np.any(ftype > 4):
    raise ValueError("bad PNG filter type")
  filt = rows[:, 1:].reshape(height, width, bpp).astype(np.int32)
  recon = np.zeros((height + 1, width + 1, bpp), dtype=np.int32)  # Row 0 / column 0: the zero border.
  for t in range(height + width - 1):
    r = np.arange(max(0, t - width + 1), min(height - 1, t) + 1)
    c = t - r
    a = recon[r + 1, c]
    b = recon[r, c + 1]
    ul = recon[r, c]
    f = ftype[r][:, None]
    pred = np.select([f == 1, f == 2, f == 3, f == 4], [a, b, (a + b) >> 1, _paeth(a, b, ul)], 0)
    recon[r + 1, c + 1] = (filt[r, c] + pred) & 255
  return recon[1:, 1:].astype(np.uint8)


# Compressed data may inflate this far beyond the size its header declares (encoders' padding, a stray final
# block); anything longer is refused before it is inflated.
_INFLATE_SLACK = 1 << 16


class _DeclaredSizeExceeded(ValueError):
  """Compressed image data inflates beyond the size the file's header declares."""


def _inflate_bounded(data: bytes, expected: int, what: str) -> bytes:
  """zlib-inflates ``data`` to at most ``expected`` + a small slack bytes: a stream that would go on (a
  decompression bomb: a tiny image whose data inflates to gigabytes) is refused without being inflated."""
  d = zlib.decompressobj()
  out = d.decompress(data, expected + _INFLATE_SLACK)
  if not d.eof and len(out) == expected + _INFLATE_SLACK and d.decompress(d.unconsumed_tail, 1):
    raise _DeclaredSizeExceeded(f"{what} inflates to more than the {expected:,} bytes the header declares "
                                "(corrupt, or a decompression bomb)")
  return out


def _decode_png16(path: str) -> np.ndarray:
  """Exact values of a non-interlaced 16-bit gray+alpha / RGB / RGBA PNG as uint16 ``HxWxC``."""
  with open(path, "rb") as f:
    blob = f.read()
  if not blob.startswith(_PNG_SIGNATURE):
    raise ValueError("not a PNG file")
  pos = len(_PNG_SIGNATURE)
  header = None
  idat = []
  while pos + 8 <= len(blob):
    length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
    body = blob[pos + 8:pos + 8 + length]
    if len(body) != length:
      raise ValueError("truncated PNG chunk")
    if kind == b"IHDR":
      header = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
      idat.append(body)
    elif kind == b"IEND":
      break
    pos += 12 + length
  if header is None or not idat:
    raise ValueError("PNG without IHDR or IDAT")
  width, height, depth, color_type, _, _, interlace = header
  channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color_type)
  if depth != 16 or channels is None:
    raise ValueError(f"unexpected PNG bit depth {depth} / colour type {color_type}")
  if interlace:
    raise ValueError("interlaced 16-bit colour PNGs are not supported")
  bpp = 2 * channels
  expected = height * (1 + width * bpp)  # filtered rows: one filter byte + the row's samples
  raw = np.frombuffer(_inflate_bounded(b"".join(idat), expected, "PNG image data"), dtype=np.uint8)
  if raw.size < expected:
    raise ValueError("truncated PNG image data")
  pixels = _png_unfilter(raw[:expected], height, width, bpp)
  pixels = pixels.reshape(height, width, channels, 2).astype(np.uint16)
  return (pixels[..., 0] << 8) | pixels[..., 1]


_TIFF_ZLIB = (8, 32946, 50013)  # Adobe deflate, deflate, PIXTIFF
_TIFF_LZMA = (34925,)


def _check_tiff_page(page, fh) -> None:
  """Raises ValueError unless the first page of a TIFF decodes within the size its header declares.

  tifffile (without imagecodecs) inflates deflate and LZMA segments completely, whatever the page's size: each
  segment is inflated here first, bounded by the page's declared size, and the data is decoded only if none
  goes beyond. Other codecs decode into a buffer of the declared size (imagecodecs) or cannot be read.
  """
  from PIL import Image
  pixels = int(page.imagewidth) * int(page.imagelength) * int(page.imagedepth or 1)
  limit = Image.MAX_IMAGE_PIXELS
  if limit and pixels > 2 * limit:  # Pillow's decompression-bomb limit, which applies to its own decoders
    raise _DeclaredSizeExceeded(f"image of {pixels:,} pixels is larger than the {2 * limit:,} Pillow's "
                                "decompression-bomb limit allows (PIL.Image.MAX_IMAGE_PIXELS)")
  if page.compression not in _TIFF_ZLIB + _TIFF_LZMA:
    return
  declared = int(page.nbytes)
  for offset, count in zip(page.dataoffsets, page.databytecounts):
    fh.seek(offset)
    data = fh.read(count)
    if page.compression in _TIFF_ZLIB:
      _inflate_bounded(data, declared, "TIFF image data")
    else:
      import lzma
      d = lzma.LZMADecompressor()
      if len(d.decompress(data, declared + _INFLATE_SLACK)) == declared + _INFLATE_SLACK and not d.eof:
        raise _DeclaredSizeExceeded(f"TIFF image data inflates to more than the {declared:,} bytes the header "
                                    "declares (corrupt, or a decompression bomb)")


def _read_tiff(path: str) -> np.ndarray:
  import tifffile  # Optional: used for 16-bit colour and float TIFFs that Pillow cannot represent.
  with tifffile.TiffFile(path) as tif:
    page = tif.pages[0]
    _check_tiff_page(page, tif.filehandle)
    arr = np.asarray(page.asarray(maxworkers=1))
  if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
    arr = np.moveaxis(arr, 0, -1)  # Planar (C, H, W) storage.
  return arr


def _normalize_channels(arr: np.ndarray) -> np.ndarray:
  """``HxW`` / ``HxWxC`` (C = 1..4) to ``HxWx3``: gray replicated, alpha dropped."""
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f"unsupported pixel layout {arr.shape}")
  c = arr.shape[-1]
  if c in (1, 2):
    return np.repeat(arr[..., :1], 3, axis=-1)
  return arr[..., :3]


def _pil_to_array(im) -> np.ndarray:
  """A loaded PIL image as an array of uint8, uint16 (16-bit modes) or float32 (mode F)."""
  mode = im.mode
  if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
    return np.asarray(im).astype(np.uint16)
  if mode == "I":  # 32-bit integer (how some decoders hand out 16-bit gray): taken as 16-bit.
    return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
  if mode == "F":
    return np.asarray(im, dtype=np.float32)
  if mode in ("P", "PA"):
    im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
  elif mode == "1":
    im = im.convert("L")
  elif mode in ("RGBa", "La"):
    im = im.convert("RGBA" if mode == "RGBa" else "LA")
  elif mode not in ("L", "LA", "RGB", "RGBA", "RGBX"):
    im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV.
  return np.asarray(im)


def _is_16bit_colour(im) -> bool:
  """Pillow reduces 16-bit colour data to 8 bits; the raw mode of its decoder tile tells."""
  if im.mode not in ("RGB", "RGBA", "LA"):
    return False
  for tile in getattr(im, "tile", None) or ():
    args = tile.args if hasattr(tile, "args") else tile[3]
    rawmode = args[0] if isinstance(args, tuple) else args
    if isinstance(rawmode, str) and ";16" in rawmode:
      return True
  return False


def _decode(path: str) -> np.ndarray:
  """Pixels of ``path`` as ``HxWxC`` uint8 / uint16 / float32 (upright, channels not yet normalised)."""
  from PIL import Image, ImageOps
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ImageReadError(f"{path}: no such file")
  if not os.path.isfile(path):
    raise ImageReadError(f"{path}: not a file")
  ext = os.path.splitext(path)[1].lower()
  try:
    with Image.open(path) as im:
      deep = _is_16bit_colour(im)  # Before getexif(), which may load the PNG and drop the tile list.
      orientation = im.getexif().get(0x0112, 1)
      if deep:
        if im.format == "PNG":
          return _orient(_decode_png16(path), orientation)
        if im.format == "TIFF":
          try:
            return _orient(_read_tiff(path), orientation)
          except ImportError:
            pass  # No tifffile: fall back to Pillow's 8-bit reduction.
      im.load()
      im = ImageOps.exif_transpose(im) if orientation not in (None, 1) else im
      arr = _pil_to_array(im)
  except ImageReadError:
    raise
  except (_DeclaredSizeExceeded, Image.DecompressionBombError) as e:
    raise ImageReadError(f"{path}: cannot read image: {e}") from None
  except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), SyntaxError, ValueError...
    if ext in (".tif", ".tiff"):
      try:
        return _read_tiff(path)
      except _DeclaredSizeExceeded as e2:
        raise ImageReadError(f"{path}: cannot read image: {e2}") from None
      except Exception:
        pass
    raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
  if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ImageReadError(f"{path}: unsupported image layout {arr.shape}")
  return arr


def read_image(path: str) -> np.ndarray:
  """The image at ``path`` as float32 ``HxWx3`` in [0, 1] (see the module docstring for the rules)."""
  arr = _decode(path)
  try:
    arr = _normalize_channels(arr)
  except ValueError as e:
    raise ImageReadError(f"{path}: {e}") from None
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / np.float32(255.0)
  if arr.dtype == np.uint16:
    return arr.astype(np.float32) / np.float32(65535.0)
  if np.issubdtype(arr.dtype, np.floating):
    return np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)
  if np.issubdtype(arr.dtype, np.integer):  # Other integer TIFFs: scale by the type's range.
    return (arr.astype(np.float64) / np.iinfo(arr.dtype).max).clip(0.0, 1.0).astype(np.float32)
  raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")


def read_uint8_rgb(path: str) -> np.ndarray:
  """Exact 8-bit values of ``path`` as uint8 ``HxWx3`` (16-bit: ``round(v / 257)``; float: ``round(255 x)``)."""
  arr = _decode(path)
  try:
    arr = _normalize_channels(arr)
  except ValueError as e:
    raise ImageReadError(f"{path}: {e}") from None
  if arr.dtype == np.uint8:
    return np.ascontiguousarray(arr)
  if arr.dtype == np.uint16:
    return np.floor(arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
  return to_uint8(read_image(path))


def read_encoded_rgb8(path) -> Tuple[bytes, Tuple[int, int]]:
  """An 8-bit image file as encoded RGB bytes and its ``(width, height)``, for storing in a dataset.

  An 8-bit RGB PNG or JPEG comes back as the file's own bytes (an exact round trip); any other 8-bit image
  (grey, palette, RGBA/LA with the alpha dropped, CMYK, BMP, TIFF, WebP, ...) gets :func:`read_uint8_rgb`'s
  channel rules and is re-encoded as PNG. Pixels are taken as stored, without EXIF orientation: the file bytes
  kept for RGB PNG/JPEG carry the orientation only as metadata, which the dataset's decoder does not apply,
  so the re-encoded files follow the same rule.

  Raises:
    ImageReadError: the file cannot be read or decoded, or has more than 8 bits per channel (a dataset stores
      8-bit images; reducing them here would silently lose precision).
  """
  from PIL import Image
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ImageReadError(f"{path}: {'not a file' if os.path.exists(path) else 'no such file'}")
  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as im:
      deep = _is_16bit_colour(im)  # Pillow would hand out such files reduced to 8 bits.
      fmt, mode, size = im.format, im.mode, im.size
      im.load()
      if mode == "RGB" and fmt in ("PNG", "JPEG") and not deep:
        return data, size
      arr = _pil_to_array(im)
  except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), SyntaxError, ValueError...
    raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
  if deep or arr.dtype != np.uint8:
    raise ImageReadError(f"{path}: unsupported image mode {mode}{' (16-bit colour)' if deep else ''}; only "
                         f"8-bit images are supported")
  try:
    arr = _normalize_channels(arr)
  except ValueError as e:
    raise ImageReadError(f"{path}: {e}") from None
  return encode_png(arr), size


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def encode_png(array, *, compress_level: int = 6) -> bytes:
  """PNG bytes of a uint8 ``HxW`` / ``HxWx3`` array (Pillow; 6 is Pillow's default level, 1 is faster)."""
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(array, np.uint8)).save(buf, format="PNG", compress_level=compress_level)
  return buf.getvalue()


def to_uint8(img) -> np.ndarray:
  """Float image in [0, 1] to uint8: clamp, ``* 255``, round half up (NaN becomes 0). uint8 passes through."""
  arr = np.asarray(img)
  if arr.dtype == np.uint8:
    return arr
  x = np.nan_to_num(arr.astype(np.float32), nan=0.0)
  return np.floor(np.clip(x, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


def process_umask() -> int:
  """The process umask: from /proc on Linux (no window in which other threads see another one), else by
  setting it and straight back."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def write_png(path: str, img, *, overwrite: bool = True) -> str:
  """Writes ``img`` (float ``HxWx3`` / ``HxW`` in [0, 1], or uint8) as an 8-bit PNG; returns the path.

  Values are rounded, not truncated. The file appears atomically (written to a temporary name in the same
  folder, then renamed) with the permissions a plain ``open()`` gives (``0o666 & ~umask``, e.g. 0644).
  ``overwrite=False`` refuses an existing file.
  """
  from PIL import Image
  path = os.fspath(path)
  arr = to_uint8(img)
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
    raise ImageWriteError(f"{path}: cannot write an image of shape {arr.shape}")
  if not overwrite and os.path.exists(path):
    raise ImageWriteError(f"{path}: exists (refusing to overwrite)")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      Image.fromarray(np.ascontiguousarray(arr)).save(f, format="PNG")
      if hasattr(os, "fchmod"):  # mkstemp makes the file 0600; give it what open() would have (0666 & ~umask)
        os.fchmod(f.fileno(), 0o666 & ~process_umask())
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError):
      raise ImageWriteError(f"{path}: cannot write ({e})") from None
    raise
  return path


def prepare_output_dir(folder: str) -> str:
  """Creates ``folder`` (and its parents) if needed and proves that files can be written into it by creating and
  deleting a hidden probe file, which also catches read-only file systems and ACLs that permission bits do not
  show. Returns the folder; raises :class:`ImageWriteError` naming it otherwise. Cheap: run it before any long
  work."""
  folder = os.fspath(folder)
  if os.path.lexists(folder) and not os.path.isdir(folder):
    raise ImageWriteError(f"{folder}: exists and is not a directory")
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ImageWriteError(f"{folder}: cannot create the output folder ({e.strerror or e})") from None
  try:
    fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise ImageWriteError(f"{folder}: cannot write into the output folder ({e.strerror or e})") from None
  return folder


def _same_file(a: str, b: str) -> bool:
  try:
    return os.path.samefile(a, b)
  except OSError:
    return os.path.realpath(a) == os.path.realpath(b)


def check_no_overwrite(outputs: Iterable[str], inputs: Iterable[str]) -> None:
  """Raises :class:`ImageWriteError` listing every output path that is (the same file as) an input."""
  real_inputs, ids = set(), set()
  for p in inputs:
    real_inputs.add(os.path.realpath(p))
    try:
      st = os.stat(p)
      ids.add((st.st_dev, st.st_ino))
    except OSError:
      pass
  clashes = []
  for out in outputs:
    clash = os.path.realpath(out) in real_inputs
    if not clash:
      try:
        st = os.stat(out)
        clash = (st.st_dev, st.st_ino) in ids
      except OSError:
        pass
    if clash:
      clashes.append(os.fspath(out))
  if clashes:
    raise ImageWriteError("refusing to overwrite input file(s): " + ", ".join(clashes))


_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_grayscale(path: str) -> bool:
  """Whether ``path`` stores one gray channel (plus alpha, perhaps), from its header: modes 1 / L / LA / I;16 /
  I / F. Palette images count as colour (they are read as RGB) even when every palette entry is gray."""
  from PIL import Image
  try:
    with Image.open(path) as im:
      return im.mode in _GRAY_MODES
  except Exception as e:
    raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def image_size(path: str) -> Tuple[int, int]:
  """``(height, width)`` of an image file after EXIF orientation, without decoding the pixels."""
  from PIL import Image
  try:
    with Image.open(path) as im:
      w, h = im.size
      orientation = im.getexif().get(0x0112, 1)
  except Exception as e:
    raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
  return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
