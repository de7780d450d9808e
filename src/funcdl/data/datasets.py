"""Real data that ships with funcdl (works offline), and readers for the user's own files.

- ``digits()``: scikit-learn's 1,797 8x8 handwritten digits (bundled file, BSD-3 licence in
  ``_bundled/LICENSE-digits.txt``), with a fixed train/test split.
- ``python_docs_corpus()``: English prose from CPython's own ``pydoc_data.topics``.
- ``read_text_lines``, ``read_csv``, ``read_npz``, ``read_idx`` / ``mnist``: readers that only
  read; nothing is ever written next to the user's files.
"""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import os
import re
import struct
from typing import Any, NamedTuple

import numpy as np

from funcdl.data.dataset import ArrayDataset

__all__ = [
    "TrainTest",
    "digits",
    "python_docs_corpus",
    "read_text_lines",
    "read_csv",
    "read_npz",
    "read_idx",
    "mnist",
]

DIGITS_TEST_SIZE = 360


class TrainTest(NamedTuple):
    train: ArrayDataset
    test: ArrayDataset


def _bundled(name: str) -> bytes:
    return (importlib.resources.files("funcdl.data") / "_bundled" / name).read_bytes()


def digits(*, flatten: bool = True, scale: bool = True) -> TrainTest:
    """scikit-learn's digits as ``TrainTest(train, test)`` of ``ArrayDataset(images, labels)``.

    1,437 training and 360 test samples, split by a fixed permutation (numpy seed 0), the same on
    every machine. Images are float32, ``(N, 64)`` (``flatten=False``: ``(N, 8, 8)``), divided by
    16 into [0, 1] (``scale=False``: raw pixel counts 0..16). Labels are int32 digits 0..9.
    ``x, y = digits().train.arrays`` gives the arrays.
    """
    table = np.loadtxt(gzip.decompress(_bundled("digits.csv.gz")).decode().splitlines(),
                       delimiter=",", dtype=np.float32)
    images, labels = table[:, :64], table[:, 64].astype(np.int32)
    if scale:
        images = images / np.float32(16.0)
    if not flatten:
        images = images.reshape(-1, 8, 8)
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:-DIGITS_TEST_SIZE], order[-DIGITS_TEST_SIZE:]
    return TrainTest(ArrayDataset(images[train], labels[train]),
                     ArrayDataset(images[test], labels[test]))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z])")
_RULE_LINE = re.compile(r"^[*=\-~^]{3,}$")


def _prose_paragraphs(text: str) -> list[str]:
    """Unindented paragraphs, whitespace collapsed; code, grammar and heading rules dropped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln for ln in para.splitlines() if ln.strip()]
        if not lines or lines[0][:1].isspace():
            continue
        lines = [ln for ln in lines if not _RULE_LINE.match(ln.strip())]
        if len(lines) == 1 and not lines[0].rstrip().endswith((".", ":", "?", "!")):
            continue  # a heading
        out.append(" ".join(" ".join(lines).split()))
    return out


def python_docs_corpus(unit: str = "sentences", *, chunk_words: int = 64,
                       min_words: int = 4) -> list[str]:
    """English prose from ``pydoc_data.topics`` (the help() texts shipped with CPython).

    ``unit="sentences"``: one sentence per item (at least ``min_words`` words), topics in
    alphabetical order. ``unit="chunks"``: the same prose cut into consecutive pieces of exactly
    ``chunk_words`` words (the incomplete tail is dropped). The text depends on the Python
    version.
    """
    from pydoc_data.topics import topics

    if unit not in ("sentences", "chunks"):
        raise ValueError(f"unit must be 'sentences' or 'chunks', got {unit!r}")
    sentences = []
    for name in sorted(topics):
        for para in _prose_paragraphs(topics[name]):
            sentences.extend(s for s in _SENTENCE_END.split(para) if len(s.split()) >= min_words)
    if unit == "sentences":
        return sentences
    if chunk_words < 1:
        raise ValueError(f"chunk_words must be >= 1, got {chunk_words}")
    words = " ".join(sentences).split()
    stop = len(words) - len(words) % chunk_words
    return [" ".join(words[i:i + chunk_words]) for i in range(0, stop, chunk_words)]


def _open_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ValueError(f"{os.fspath(path)}: corrupt gzip data ({e})") from e
    return data


def read_text_lines(path: str | os.PathLike, *, strip: bool = True, skip_empty: bool = True,
                    encoding: str = "utf-8") -> list[str]:
    """The lines of a text file (gzip-compressed files too), without newlines."""
    raw = _open_bytes(path)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: not valid {encoding} text at byte {e.start}; pass "
                         "encoding= to read it") from e
    lines = text.splitlines()
    if strip:
        lines = [ln.strip() for ln in lines]
    return [ln for ln in lines if ln] if skip_empty else lines


def _to_float(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def read_csv(path: str | os.PathLike, *, header: bool | str = "infer", delimiter: str = ",",
             dtype: Any = np.float32) -> tuple[np.ndarray, list[str] | None]:
    """A numeric CSV file as ``(array [rows, columns], column names or None)``.

    ``header="infer"`` treats the first row as names when any cell of it is not a number.
    Ragged rows or non-numeric cells raise ValueError naming the file, line and column.
    """
    name = os.fspath(path)
    text = _open_bytes(path).decode("utf-8-sig", errors="replace")
    rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1)
            if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{name}: the CSV file is empty")
    names = None
    first = rows[0][1]
    if header is True or (header == "infer" and any(_to_float(c) is None for c in first)):
        names = [c.strip() for c in first]
        rows = rows[1:]
    elif header not in (False, "infer"):
        raise ValueError(f"header must be True, False or 'infer', got {header!r}")
    width = len(names) if names is not None else len(first)
    out = np.empty((len(rows), width), dtype=dtype)
    for r, (line, cells) in enumerate(rows):
        if len(cells) != width:
            raise ValueError(f"{name}, line {line}: expected {width} fields, got {len(cells)}")
        for c, cell in enumerate(cells):
            value = _to_float(cell)
            if value is None:
                raise ValueError(f"{name}, line {line}, column {c + 1}: could not convert "
                                 f"{cell!r} to a number")
            out[r, c] = value
    return out, names


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` archive as a dict (no pickled objects are loaded)."""
    name = os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{name}: not a readable .npz archive ({e})") from e
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{name}: a single .npy array, not an .npz archive; use np.load")
    with loaded as archive:
        return {k: archive[k] for k in archive.files}


# IDX type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte values are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (MNIST's format), plain or gzip-compressed, as a native-endian numpy array."""
    name = os.fspath(path)
    data = _open_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{name}: too short for an IDX file ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError(f"{name}: bad IDX magic number 0x{data[:4].hex()} (must start with two "
                         "zero bytes)")
    if code not in _IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX data type code 0x{code:02x} (expected one of "
                         f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({ndim} dimensions need {header} bytes, "
                         f"file has {len(data)})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{name}: IDX header says shape {dims} of {dtype.name} "
                         f"({expected} bytes of data) but the file has {len(data) - header}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _find(directory: str, stem: str) -> str:
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                      stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {stem}[.gz] in {directory}; download MNIST's four IDX files "
                            "there first")


def mnist(directory: str | os.PathLike) -> TrainTest:
    """MNIST from its four IDX files in ``directory`` (``train-images-idx3-ubyte[.gz]`` ...).

    Images are float32 ``(N, 784)`` in [0, 1], labels int32, ready for the slides' 784-input MLP.
    """
    directory = os.fspath(directory)
    parts = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{directory}: {prefix} images {images.shape} and labels "
                             f"{labels.shape} do not match (expected (N, rows, cols) and (N,))")
        x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
        parts.append(ArrayDataset(x, labels.astype(np.int32)))
    return TrainTest(*parts)
