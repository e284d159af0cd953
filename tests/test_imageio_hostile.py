"""Hostile image files: compressed data that inflates far beyond the size the header declares (decompression
bombs) and headers that declare gigapixel images must end in one ImageReadError naming the file, quickly and
without the memory the inflated data would take. Peak memory is measured in a fresh process, as
tests/test_convert_hostile.py does for checkpoints."""
import json
import lzma
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from sparse_restore import imageio
from rss_probe import RSS_KIB_SOURCE

BOMB_BYTES = 1 << 30          # what the compressed data inflates to
MEMORY_BOUND_MB = 64          # allowed peak growth of a process reading one bomb (it would be > 1 GiB unbounded)


def _zeros_deflated(n: int) -> bytes:
  """A zlib stream of ``n`` zero bytes (``n`` a multiple of 16 MiB), built in well under a second: after a full
  flush the compressor starts afresh, so every 16 MiB block compresses to the same bytes and is repeated."""
  block = bytes(16 << 20)
  c = zlib.compressobj(9)
  first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
  again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
  body = first + again * (n // len(block) - 1)
  adler = 1
  for _ in range(n // len(block)):
    adler = zlib.adler32(block, adler)
  return body + b"\x03\x00" + struct.pack(">I", adler)  # an empty final fixed block, then the checksum


def _chunk(kind: bytes, body: bytes) -> bytes:
  return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(path, width, height, depth, color_type, idat: bytes):
  path.write_bytes(b"\x89PNG\r\n\x1a\n"
                   + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
                   + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
  return path


def _tiff_bomb(path, data: bytes, compression: str):
  """A 1x1 16-bit RGB TIFF whose one strip is ``data`` (tifffile writes it, then the strip is replaced)."""
  tifffile = pytest.importorskip("tifffile")
  tifffile.imwrite(path, np.zeros((1, 1, 3), np.uint16), photometric="rgb", compression=compression)
  with open(path, "ab") as f:
    offset = f.seek(0, 2)
    f.write(data)
  with tifffile.TiffFile(path, mode="r+b") as tif:
    tif.pages[0].tags["StripOffsets"].overwrite([offset])
    tif.pages[0].tags["StripByteCounts"].overwrite([len(data)])
  return path


@pytest.fixture(scope="module")
def zeros_1gib():
  return _zeros_deflated(BOMB_BYTES)


def test_zero_stream_builder_is_a_valid_zlib_stream():
  data = _zeros_deflated(32 << 20)
  assert zlib.decompress(data) == bytes(32 << 20)


def _bomb(case, tmp_path, zeros):
  if case == "png16_rgb":   # 1x1 16-bit RGB: read by imageio's own 16-bit decoder
    return _png(tmp_path / "bomb16.png", 1, 1, 16, 2, zeros)
  if case == "png16_gray":  # 1x1 16-bit gray: read by Pillow
    return _png(tmp_path / "bomb16g.png", 1, 1, 16, 0, zeros)
  if case == "png8_rgb":    # 1x1 8-bit RGB: read by Pillow
    return _png(tmp_path / "bomb8.png", 1, 1, 8, 2, zeros)
  if case == "tiff_deflate":  # 1x1 16-bit RGB TIFF: read by tifffile
    return _tiff_bomb(tmp_path / "bomb.tif", zeros, "zlib")
  raise AssertionError(case)


_PEAK_SCRIPT = RSS_KIB_SOURCE + textwrap.dedent("""
    import json, sys, time

    from sparse_restore import imageio
    import PIL.Image, PIL.PngImagePlugin, PIL.TiffImagePlugin, numpy
    try:
      import tifffile
    except ImportError:
      pass
    baseline, _ = rss_kib()
    t0 = time.time()
    try:
      shape, error = list(getattr(imageio, sys.argv[1])(sys.argv[2]).shape), None
    except imageio.ImageReadError as e:
      shape, error = None, str(e)
    seconds = time.time() - t0
    _, peak = rss_kib()
    print(json.dumps({"shape": shape, "error": error, "seconds": seconds, "baseline_kib": baseline,
                      "peak_kib": peak}))
""")


def _read_in_fresh_process(reader, path):
  """(result dict, peak RSS in MB above the RSS after the imports) of ``imageio.<reader>(path)``."""
  r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, reader, str(path)], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr
  result = json.loads(r.stdout.strip().splitlines()[-1])
  return result, (result["peak_kib"] - result["baseline_kib"]) / 1024


@pytest.mark.parametrize("case", ["png16_rgb", "png16_gray", "png8_rgb", "tiff_deflate"])
def test_decompression_bomb_is_refused_in_little_memory_and_time(tmp_path, zeros_1gib, case):
  """A 1x1 image whose ~1 MB of compressed data inflates to 1 GiB: imageio's 16-bit PNG decoder and the TIFF
  reader refuse it naming the file (previously 2.1 GB and 7-10 s each); Pillow's decoders stop at the declared
  size and return the pixel."""
  path = _bomb(case, tmp_path, zeros_1gib)
  assert os.path.getsize(path) < (2 << 20)
  for reader in ("read_image", "read_uint8_rgb"):
    result, extra_mb = _read_in_fresh_process(reader, path)
    if case in ("png16_rgb", "tiff_deflate"):
      declared = 7 if case == "png16_rgb" else 6  # PNG rows carry a filter byte
      assert result["error"] == (f"{path}: cannot read image: {'PNG' if declared == 7 else 'TIFF'} image data "
                                 f"inflates to more than the {declared} bytes the header declares (corrupt, or a "
                                 "decompression bomb)"), result
    else:
      assert result["shape"] == [1, 1, 3], result
    assert extra_mb < MEMORY_BOUND_MB, f"{case} {reader}: peak RSS grew by {extra_mb:.0f} MB"
    assert result["seconds"] < 10, result


def test_lzma_tiff_bomb_is_refused(tmp_path):
  c = lzma.LZMACompressor(preset=0)
  data = c.compress(bytes(64 << 20)) + c.flush()
  path = _tiff_bomb(tmp_path / "lzma.tif", data, "lzma")
  with pytest.raises(imageio.ImageReadError, match=r"lzma\.tif: cannot read image: TIFF image data inflates to "
                                                   r"more than the 6 bytes"):
    imageio.read_image(str(path))


def test_declared_data_with_a_little_padding_still_reads(tmp_path):
  """A genuine 16-bit PNG (and TIFF) whose stream carries a few bytes past the declared rows decodes as before."""
  rows = np.array([[1000, 2000, 65535]], np.uint16)  # 1x1 RGB
  raw = b"\x00" + rows.astype(">u2").tobytes()
  path = _png(tmp_path / "padded.png", 1, 1, 16, 2, zlib.compress(raw + bytes(100)))
  np.testing.assert_array_equal(imageio.read_uint8_rgb(str(path)), np.floor(rows / 257 + 0.5).astype(np.uint8)
                                [None])
  np.testing.assert_allclose(imageio.read_image(str(path))[0, 0], rows[0] / 65535.0, rtol=1e-6)
  tifffile = pytest.importorskip("tifffile")
  deep = np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000
  tifffile.imwrite(tmp_path / "deep.tif", deep, photometric="rgb", compression="zlib")
  np.testing.assert_array_equal(imageio.read_image(str(tmp_path / "deep.tif")),
                                deep.astype(np.float32) / np.float32(65535))


@pytest.mark.parametrize("ext,depth", [(".png", 8), (".png", 16)])
def test_gigapixel_header_is_refused_by_the_pixel_limit(tmp_path, ext, depth):
  """Pillow's decompression-bomb limit (2 x PIL.Image.MAX_IMAGE_PIXELS) applies to every reader, with a
  message naming the file, before any pixel data is inflated."""
  path = _png(tmp_path / f"huge{depth}{ext}", 20000, 20000, depth, 2, zlib.compress(bytes(1000)))
  t0 = time.time()
  for read in (imageio.read_image, imageio.read_uint8_rgb, imageio.image_size):
    with pytest.raises(imageio.ImageReadError, match=rf"huge{depth}\.png: cannot read image.*400000000 pixels"):
      read(str(path))
  assert time.time() - t0 < 5


def test_gigapixel_tiff_header_is_refused_by_the_tiff_reader(tmp_path, monkeypatch):
  """The TIFF reader applies the same pixel limit itself: it also reads files Pillow cannot open (here float16
  samples), where Pillow's check never runs."""
  tifffile = pytest.importorskip("tifffile")
  tifffile.imwrite(tmp_path / "half.tif", np.full((4, 5, 3), 0.5, np.float16), photometric="rgb")
  assert imageio.read_image(str(tmp_path / "half.tif")).shape == (4, 5, 3)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8)  # a 4x5 image is then "too large"
  with pytest.raises(imageio.ImageReadError, match=r"half\.tif: cannot read image: image of 20 pixels is larger "
                                                   r"than the 16 Pillow's decompression-bomb limit allows"):
    imageio.read_image(str(tmp_path / "half.tif"))
