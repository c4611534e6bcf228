"""Vectors in Arrow: an (n, dim) float32 array as a fixed_size_list<float32, dim> column and
back, without Python loops. Embeddings, MinHash signatures and centroids all travel this way."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, dim) float32 -> Arrow fixed_size_list<float32, dim> without a Python loop."""
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).ravel(), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def vectors_of(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed_size_list<float32, dim> column -> (n, dim) float32 numpy, zero-copy per chunk."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    dim = column.type.list_size
    parts = [chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim) for chunk in chunks]
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
