"""Bundled data and file readers: digits vs scikit-learn, IDX/CSV/npz built byte by byte."""

import gzip
import os
import struct

import numpy as np
import pytest

from funcdl.data.datasets import (
    digits,
    mnist,
    python_docs_corpus,
    read_csv,
    read_idx,
    read_npz,
    read_text_lines,
)


def test_digits_are_sklearns_digits_with_a_fixed_split():
    train, test = digits()
    (xtr, ytr), (xte, yte) = train.arrays, test.arrays
    assert xtr.shape == (1437, 64) and xte.shape == (360, 64)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int32
    assert 0 <= xtr.min() and xtr.max() == 1.0
    raw = digits(flatten=False, scale=False)
    assert raw.train.arrays[0].shape == (1437, 8, 8) and raw.train.arrays[0].max() == 16
    np.testing.assert_array_equal(raw.train.arrays[0].reshape(1437, 64) / 16, xtr)
    assert digits().test.arrays[1].tolist() == yte.tolist()  # fixed: the same split every call
    # the first image of the UCI/sklearn file (a 0), as printed in scikit-learn's docs
    first_row = [0, 0, 5, 13, 9, 1, 0, 0]
    allx = np.concatenate([raw.train.arrays[0], raw.test.arrays[0]])
    ally = np.concatenate([raw.train.arrays[1], raw.test.arrays[1]])
    hits = [i for i in range(len(allx)) if allx[i][0].tolist() == first_row
            and allx[i][1].tolist() == [0, 0, 13, 15, 10, 15, 5, 0]]
    assert [ally[i] for i in hits] == [0]
    # reference facts read once from sklearn.datasets.load_digits() (scikit-learn 1.9.1)
    assert np.bincount(ally).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert int(allx.sum()) == 561718


def test_python_docs_corpus_sentences_and_chunks():
    sentences = python_docs_corpus()
    assert len(sentences) > 1000
    assert ("Assert statements are a convenient way to insert debugging assertions into a "
            "program:") in sentences
    assert all(len(s.split()) >= 4 and "\n" not in s for s in sentences)
    chunks = python_docs_corpus("chunks", chunk_words=50)
    assert all(len(c.split()) == 50 for c in chunks)
    words = " ".join(sentences).split()
    assert " ".join(chunks).split() == words[: len(chunks) * 50]
    with pytest.raises(ValueError, match="unit"):
        python_docs_corpus("paragraphs")


def idx_bytes(code, dims, payload):
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def test_read_idx_by_hand(tmp_path):
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(idx_bytes(0x08, (2, 3, 4), images.tobytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), images)
    ints = [1, -2, 70000]
    data = idx_bytes(0x0C, (3,), struct.pack(">3i", *ints))
    (tmp_path / "b.gz").write_bytes(gzip.compress(data))
    got = read_idx(tmp_path / "b.gz")
    assert got.tolist() == ints and got.dtype == np.int32 and got.dtype.isnative
    doubles = idx_bytes(0x0E, (1, 2), struct.pack(">2d", 0.5, -3.25))
    (tmp_path / "c").write_bytes(doubles)
    assert read_idx(tmp_path / "c").tolist() == [[0.5, -3.25]]


@pytest.mark.parametrize("content,message", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01x", "magic number"),
    (idx_bytes(0x07, (1,), b"x"), "data type code 0x07"),
    (idx_bytes(0x08, (2, 2), b"abc"), r"shape \(2, 2\).*4 bytes of data.*has 3"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (b"\x00", "too short"),
    (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
])
def test_read_idx_malformed_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "broken-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_mnist_from_idx_files_writes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(0x08, (n, 28, 28), pixels.tobytes())))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(
            idx_bytes(0x08, (n,), labels.tobytes()))
    listing = sorted(os.listdir(tmp_path))
    train, test = mnist(tmp_path)
    assert len(train) == 5 and len(test) == 3
    x, y = test.arrays
    assert x.shape == (3, 784) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x * 255, pixels.reshape(3, 784))
    np.testing.assert_array_equal(y, labels)
    assert sorted(os.listdir(tmp_path)) == listing
    with pytest.raises(FileNotFoundError, match="train-images"):
        mnist(tmp_path / "nowhere")


def test_read_csv_headers_and_errors(tmp_path):
    (tmp_path / "h.csv").write_text("a,b\n1,2.5\n-3,4e1\n\n")
    data, names = read_csv(tmp_path / "h.csv")
    assert names == ["a", "b"] and data.tolist() == [[1, 2.5], [-3, 40]]
    (tmp_path / "n.csv").write_text("1;2\n3;4\n")
    data, names = read_csv(tmp_path / "n.csv", delimiter=";")
    assert names is None and data.tolist() == [[1, 2], [3, 4]]
    data, names = read_csv(tmp_path / "n.csv", delimiter=";", header=True)
    assert names == ["1", "2"] and data.tolist() == [[3, 4]]
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match=r"ragged.csv, line 3: expected 2 fields, got 1"):
        read_csv(tmp_path / "ragged.csv")
    (tmp_path / "text.csv").write_text("a,b\n1,x\n")
    with pytest.raises(ValueError, match=r"text.csv, line 2, column 2: could not convert 'x'"):
        read_csv(tmp_path / "text.csv")
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(ValueError, match="empty.csv: the CSV file is empty"):
        read_csv(tmp_path / "empty.csv")


def test_read_npz_and_text_lines(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(3), y=np.eye(2))
    got = read_npz(tmp_path / "a.npz")
    assert sorted(got) == ["x", "y"] and got["y"].tolist() == [[1, 0], [0, 1]]
    np.save(tmp_path / "b.npy", np.arange(3))
    with pytest.raises(ValueError, match="b.npy"):
        read_npz(tmp_path / "b.npy")
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="c.npz"):
        read_npz(tmp_path / "c.npz")
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress("  one \n\nnaïve two\n".encode()))
    assert read_text_lines(tmp_path / "t.txt.gz") == ["one", "naïve two"]
    assert read_text_lines(tmp_path / "t.txt.gz", strip=False, skip_empty=False) == [
        "  one ", "", "naïve two"]
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ValueError, match="bad.txt: not valid utf-8"):
        read_text_lines(tmp_path / "bad.txt")
