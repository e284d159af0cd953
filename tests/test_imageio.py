"""Image reading/writing: formats, gray/alpha/palette/16-bit/EXIF handling, errors, rounding, listing."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from sparse_restore import imageio


def _rng(seed=0):
  return np.random.default_rng(seed)


def _paeth(a, b, c):
  pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
  return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _encode_png16(values: np.ndarray, color_type: int) -> bytes:
  """A 16-bit PNG (Pillow cannot write 16-bit colour) using every row filter type in turn."""
  h, w, ch = values.shape
  bpp = 2 * ch
  raw = values.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int64)
  rows = []
  for y in range(h):
    x = raw[y]
    up = raw[y - 1] if y else np.zeros_like(x)
    left = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
    ul = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])
    ftype = y % 5
    pred = [np.zeros_like(x), left, up, (left + up) >> 1, _paeth(left, up, ul)][ftype]
    rows.append(bytes([ftype]) + ((x - pred) & 255).astype(np.uint8).tobytes())

  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def test_rgb_png_exact(tmp_path):
  a = _rng().integers(0, 256, (9, 13, 3), dtype=np.uint8)
  Image.fromarray(a).save(tmp_path / "a.png")
  x = imageio.read_image(str(tmp_path / "a.png"))
  assert x.dtype == np.float32 and x.shape == (9, 13, 3)
  np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), a)
  np.testing.assert_array_equal(imageio.read_uint8_rgb(str(tmp_path / "a.png")), a)


@pytest.mark.parametrize("ext", ["bmp", "tiff", "ppm", "webp"])
def test_other_lossless_formats(tmp_path, ext):
  a = _rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
  path = tmp_path / f"a.{ext}"
  Image.fromarray(a).save(path, **({"lossless": True} if ext == "webp" else {}))
  np.testing.assert_array_equal(imageio.read_uint8_rgb(str(path)), a)


def test_grayscale_replicated(tmp_path):
  g = _rng(2).integers(0, 256, (5, 8), dtype=np.uint8)
  Image.fromarray(g, mode="L").save(tmp_path / "g.png")
  x = imageio.read_image(str(tmp_path / "g.png"))
  assert x.shape == (5, 8, 3)
  for c in range(3):
    np.testing.assert_allclose(x[..., c], g / 255.0, atol=1e-7)
  Image.fromarray(g > 128).save(tmp_path / "bw.png")  # mode '1'
  bw = imageio.read_uint8_rgb(str(tmp_path / "bw.png"))
  np.testing.assert_array_equal(bw[..., 1], np.where(g > 128, 255, 0))


def test_alpha_dropped_keeping_colours(tmp_path):
  rgba = _rng(3).integers(0, 256, (4, 6, 4), dtype=np.uint8)
  rgba[0, 0, 3] = 0  # Fully transparent pixel keeps its stored colour (as MATLAB imread / OpenCV).
  Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
  np.testing.assert_array_equal(imageio.read_uint8_rgb(str(tmp_path / "a.png")), rgba[..., :3])
  la = rgba[..., :2]
  Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
  got = imageio.read_uint8_rgb(str(tmp_path / "la.png"))
  np.testing.assert_array_equal(got, np.repeat(la[..., :1], 3, axis=-1))


def test_palette_images(tmp_path):
  a = _rng(4).integers(0, 4, (5, 5), dtype=np.uint8)
  pal = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * (256 * 3 - 12)
  im = Image.fromarray(a, mode="P")
  im.putpalette(pal)
  im.save(tmp_path / "p.png")
  im.save(tmp_path / "pt.png", transparency=1)
  expected = np.array(pal, np.uint8).reshape(256, 3)[a]
  np.testing.assert_array_equal(imageio.read_uint8_rgb(str(tmp_path / "p.png")), expected)
  np.testing.assert_array_equal(imageio.read_uint8_rgb(str(tmp_path / "pt.png")), expected)


def test_16bit_gray_png_scaled_by_65535(tmp_path):
  v = np.array([[0, 65535, 257], [1000, 32768, 12345]], dtype=np.uint16)
  Image.fromarray(v).save(tmp_path / "g16.png")
  assert Image.open(tmp_path / "g16.png").mode.startswith("I")
  x = imageio.read_image(str(tmp_path / "g16.png"))
  np.testing.assert_allclose(x[..., 0], v / 65535.0, atol=1e-7)
  np.testing.assert_array_equal(imageio.read_uint8_rgb(str(tmp_path / "g16.png"))[..., 2],
                                np.floor(v / 257.0 + 0.5).astype(np.uint8))


@pytest.mark.parametrize("channels,color_type", [(3, 2), (4, 6), (2, 4)])
def test_16bit_colour_png_exact(tmp_path, channels, color_type):
  v = _rng(5).integers(0, 65536, (11, 17, channels)).astype(np.uint16)
  path = tmp_path / "c16.png"
  path.write_bytes(_encode_png16(v, color_type))
  assert Image.open(path).mode in ("RGB", "RGBA", "LA")  # Pillow alone would keep only the high bytes.
  x = imageio.read_image(str(path))
  expected = v[..., :3] if channels >= 3 else np.repeat(v[..., :1], 3, axis=-1)
  np.testing.assert_allclose(x, expected / 65535.0, atol=1e-7)


def test_16bit_rgb_tiff(tmp_path):
  tifffile = pytest.importorskip("tifffile")
  v = _rng(6).integers(0, 65536, (5, 7, 3)).astype(np.uint16)
  tifffile.imwrite(tmp_path / "c16.tif", v, photometric="rgb")
  np.testing.assert_allclose(imageio.read_image(str(tmp_path / "c16.tif")), v / 65535.0, atol=1e-7)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(tmp_path, orientation):
  a = np.zeros((8, 16, 3), np.uint8)
  a[:4, :8] = 255  # A bright top-left quadrant shows where the image ends up.
  im = Image.fromarray(a)
  exif = im.getexif()
  exif[0x0112] = orientation
  path = tmp_path / "r.jpg"
  im.save(path, exif=exif.tobytes(), quality=95)
  x = imageio.read_image(str(path))
  ref = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
  assert x.shape == ref.shape
  assert x.shape[:2] == ((16, 8) if orientation in (6, 8) else (8, 16))
  np.testing.assert_array_equal(imageio.read_uint8_rgb(str(path)), ref)
  assert imageio.image_size(str(path)) == x.shape[:2]


def test_orientation_table_matches_pillow():
  a = _rng(7).integers(0, 256, (3, 5, 3), dtype=np.uint8)
  methods = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
  for o, m in methods.items():
    np.testing.assert_array_equal(imageio._orient(a, o), np.asarray(Image.fromarray(a).transpose(m)))


def test_unreadable_files_raise_named_errors(tmp_path):
  a = _rng(8).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(a).save(tmp_path / "ok.png")
  data = (tmp_path / "ok.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
  (tmp_path / "text.png").write_text("not an image")
  (tmp_path / "empty.jpg").write_bytes(b"")
  for name in ("cut.png", "text.png", "empty.jpg", "missing.png"):
    path = str(tmp_path / name)
    with pytest.raises(imageio.ImageReadError, match=name):
      imageio.read_image(path)
    with pytest.raises(imageio.ImageReadError, match=name):
      imageio.read_uint8_rgb(path)


def test_write_png_rounds_clamps_and_is_atomic(tmp_path):
  levels = np.array([0, 1, 10, 127, 254], np.float32)
  x = np.zeros((2, 5, 3), np.float32)
  x[0] = ((levels + 0.6) / 255.0)[:, None]   # Truncation would give `levels`; rounding gives levels + 1.
  x[1] = ((levels + 0.4) / 255.0)[:, None]
  x[1, 0] = -0.5                              # Clamped to 0.
  x[1, 4] = 7.0                               # Clamped to 255.
  x[1, 3, 0] = np.nan                         # NaN written as 0.
  path = tmp_path / "out.png"
  assert imageio.write_png(str(path), x) == str(path)
  got = np.asarray(Image.open(path))
  assert got.dtype == np.uint8 and got.shape == (2, 5, 3)
  np.testing.assert_array_equal(got[0, :, 0], levels + 1)
  np.testing.assert_array_equal(got[1, :, 1], [0, 1, 10, 127, 255])
  assert got[1, 3, 0] == 0
  assert sorted(os.listdir(tmp_path)) == ["out.png"]  # No temporary files left.
  # Round trip through read_image is exact for 8-bit data.
  y = imageio.read_image(str(path))
  imageio.write_png(str(tmp_path / "again.png"), y)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png")), got)
  with pytest.raises(imageio.ImageWriteError, match="exists"):
    imageio.write_png(str(path), x, overwrite=False)


def test_list_images_natural_order(tmp_path):
  names = ["10.png", "2.png", "1.png", "img11.JPG", "img9.jpeg", "b.bmp", "A.tif"]
  for n in names:
    (tmp_path / n).write_bytes(b"x")
  (tmp_path / "notes.txt").write_text("x")
  (tmp_path / ".hidden.png").write_bytes(b"x")
  (tmp_path / "sub.png").mkdir()
  got = [os.path.basename(p) for p in imageio.list_images(str(tmp_path))]
  assert got == ["1.png", "2.png", "10.png", "A.tif", "b.bmp", "img9.jpeg", "img11.JPG"]
  with pytest.raises(imageio.ImageReadError, match="not a directory"):
    imageio.list_images(str(tmp_path / "nope"))


def test_read_encoded_rgb8_keeps_rgb_files_and_reencodes_the_rest(tmp_path):
  """What the datasets store: an 8-bit RGB PNG/JPEG's own bytes; other 8-bit images as RGB PNGs with the same
  channel rules as read_uint8_rgb, pixels as stored (no EXIF rotation); deeper images refused by name."""
  rng = _rng(8)
  rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "rgb.png")
  Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=90)
  for name in ("rgb.png", "rgb.jpg"):
    data, size = imageio.read_encoded_rgb8(tmp_path / name)
    assert data == (tmp_path / name).read_bytes() and size == (9, 6)
  rgba = rng.integers(0, 256, (6, 9, 4), dtype=np.uint8)
  Image.fromarray(rgba).save(tmp_path / "rgba.png")
  Image.fromarray(rgba[..., 0]).save(tmp_path / "grey.bmp")
  for name in ("rgba.png", "grey.bmp"):
    data, size = imageio.read_encoded_rgb8(tmp_path / name)
    with Image.open(io.BytesIO(data)) as im:
      assert (im.format, im.mode, im.size) == ("PNG", "RGB", (9, 6))
      np.testing.assert_array_equal(np.asarray(im), imageio.read_uint8_rgb(str(tmp_path / name)))
  im = Image.fromarray(rgb)
  exif = im.getexif()
  exif[0x0112] = 6
  im.save(tmp_path / "rotated.png", exif=exif.tobytes())
  Image.open(tmp_path / "rotated.png").convert("L").save(tmp_path / "rotated_grey.png", exif=exif.tobytes())
  assert imageio.read_encoded_rgb8(tmp_path / "rotated_grey.png")[1] == (9, 6)  # as stored, not turned
  Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "g16.png")
  (tmp_path / "c16.png").write_bytes(_encode_png16(rng.integers(0, 65536, (3, 4, 3)).astype(np.uint16), 2))
  for name in ("g16.png", "c16.png"):
    with pytest.raises(imageio.ImageReadError, match=f"{name}: unsupported image mode .*only 8-bit"):
      imageio.read_encoded_rgb8(tmp_path / name)
  (tmp_path / "bad.png").write_bytes((tmp_path / "rgb.png").read_bytes()[:60])
  with pytest.raises(imageio.ImageReadError, match="bad.png: cannot read image"):
    imageio.read_encoded_rgb8(tmp_path / "bad.png")


def test_check_no_overwrite(tmp_path):
  (tmp_path / "in").mkdir()
  src = tmp_path / "in" / "1.png"
  src.write_bytes(b"x")
  os.symlink(tmp_path / "in", tmp_path / "alias")
  imageio.check_no_overwrite([str(tmp_path / "out" / "1.png")], [str(src)])
  for out in (str(src), str(tmp_path / "in" / ".." / "in" / "1.png"), str(tmp_path / "alias" / "1.png")):
    with pytest.raises(imageio.ImageWriteError, match="1.png"):
      imageio.check_no_overwrite([out], [str(src)])


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_write_png_gives_the_files_usual_permissions(tmp_path, umask):
  """The temporary file behind the atomic write is private (mkstemp: 0600); the written PNG gets what open()
  would give it under the process umask (0644 under 022), as does a replaced file."""
  old = os.umask(umask)
  try:
    path = tmp_path / "out.png"
    imageio.write_png(str(path), np.zeros((2, 2, 3), np.float32))
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    os.chmod(path, 0o600)
    imageio.write_png(str(path), np.ones((2, 2, 3), np.float32))
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert imageio.process_umask() == umask  # read without changing it
  finally:
    os.umask(old)
