"""A NumPy reader for the IDX format of (Fashion-)MNIST.

IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte magic number
`0x00 0x00 <dtype code> <ndim>`, then `ndim` big-endian uint32 dimension sizes,
then the array in C order, big-endian. The reader needs nothing beyond NumPy so
`kd_jax.data` works on hosts without TensorFlow.

Example:
  >>> images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
  >>> images.shape, images.dtype
  ((10000, 28, 28), dtype('uint8'))
"""

from __future__ import annotations

import gzip
import math
import os
import struct

import numpy as np

# IDX type codes -> big-endian NumPy dtypes.
DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file, gzip-compressed or plain, into a native-endian array.

  Compression is detected from the gzip magic bytes, not the file name.

  Args:
    path: the file.

  Returns:
    A writable array with the file's shape and dtype (byte order converted to
    the host's).

  Raises:
    ValueError: the magic number is not IDX's, or the payload size does not
      match the header's dimensions (truncated or trailing data).
  """
  with open(path, "rb") as f:
    compressed = f.read(2) == _GZIP_MAGIC
  with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
    data = f.read()
  if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in DTYPES:
    raise ValueError(
        f"{os.fspath(path)!r} is not an IDX file: magic number "
        f"0x{data[:4].hex()} should be 0x0000 followed by a type code in "
        f"{sorted(hex(c) for c in DTYPES)} and the number of dimensions"
    )
  dtype, ndim = DTYPES[data[2]], data[3]
  header_size = 4 + 4 * ndim
  if len(data) < header_size:
    raise ValueError(f"{os.fspath(path)!r}: IDX header truncated")
  shape = struct.unpack(f">{ndim}I", data[4:header_size])
  expected = math.prod(shape) * dtype.itemsize
  if len(data) - header_size != expected:
    raise ValueError(
        f"{os.fspath(path)!r}: IDX payload has {len(data) - header_size} bytes"
        f", header shape {shape} of {dtype.name} needs {expected}"
    )
  array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
  return array.astype(dtype.newbyteorder("="))
