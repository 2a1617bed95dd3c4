"""Square clients x clients matrices of which only some entries are stored.

pFedLIA's influence scores ``S[i, j]`` exist only where client ``i`` scored ``j``: with
``peers_scored: 20`` a row holds 21 entries whatever the federation's size, so a dense
(N, N) float64 matrix (800 MB at 10,000 clients) would be almost all "not scored".
:class:`SparseMatrix` keeps the stored entries only, as the three arrays of the CSR format
(scipy's :class:`~scipy.sparse.csr_matrix` is a view of them: :meth:`SparseMatrix.csr`):

* an entry that is not stored was not scored (dense views show NaN, or False for a bool
  matrix such as pFedLIA's peers);
* a stored entry is a measurement, and a stored 0 is a score of 0.

It is a frozen dataclass of NumPy arrays, so server states holding it are compared,
checkpointed (:mod:`plural.safety.plain`) and pickled like any other part. :class:`SparseRow`
is one row (a client's own scores), numbers only, so it can travel to and from clients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

__all__ = ["SparseMatrix", "SparseRow"]


def _index(array: Any) -> np.ndarray:
    return np.asarray(array, dtype=np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class SparseRow:
    """One row: the ``columns`` stored (ascending) and their ``values``."""

    columns: np.ndarray
    values: np.ndarray

    @classmethod
    def empty(cls) -> SparseRow:
        """No entry (nothing scored)."""
        return cls(_index([]), np.zeros(0))

    @classmethod
    def from_dense(cls, row: np.ndarray) -> SparseRow:
        """The entries of a dense row that are set: not NaN (float), True (bool)."""
        row = np.asarray(row)
        kept = row if row.dtype == bool else ~np.isnan(row)
        columns = np.flatnonzero(kept)
        return cls(columns, row[columns].copy())

    def merged(self, columns: Sequence[int], values: Sequence[float]) -> SparseRow:
        """This row with ``columns`` set to ``values`` (a NaN value removes the entry)."""
        table = dict(zip(self.columns.tolist(), self.values.tolist(), strict=True))
        table.update(zip((int(c) for c in columns), (float(v) for v in values), strict=True))
        kept = sorted(c for c, v in table.items() if v == v)  # NaN: not scored
        return SparseRow(_index(kept), np.array([table[c] for c in kept], dtype=np.float64))

    def dense(self, n: int) -> np.ndarray:
        """The row as ``n`` floats, NaN where no entry is stored."""
        row = np.full(n, np.nan)
        row[self.columns] = self.values
        return row


@dataclasses.dataclass(frozen=True, eq=False)
class SparseMatrix:
    """An (N, N) matrix as CSR arrays (columns ascending within each row); see the module
    docstring. Never written into: every method returns a new matrix."""

    indptr: np.ndarray
    """(N + 1,) int64: row ``i``'s entries are ``indptr[i]:indptr[i + 1]``."""
    indices: np.ndarray
    """(nnz,) int64 columns."""
    values: np.ndarray
    """(nnz,) float64 (scores) or bool (peers)."""

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.n

    @property
    def nnz(self) -> int:
        return len(self.indices)

    @classmethod
    def empty(cls, n: int, dtype: type = np.float64) -> SparseMatrix:
        """N x N with no entry stored (nothing scored)."""
        return cls(np.zeros(n + 1, dtype=np.int64), _index([]), np.zeros(0, dtype=dtype))

    @classmethod
    def from_rows(cls, n: int, rows: Sequence[SparseRow], dtype: type = np.float64) -> SparseMatrix:
        """From one :class:`SparseRow` per row, in order."""
        if len(rows) != n:
            raise ValueError(f"expected {n} rows, got {len(rows)}")
        counts = np.array([len(r.columns) for r in rows], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        indices = _index(np.concatenate([r.columns for r in rows])) if n else _index([])
        values = np.concatenate([r.values for r in rows]) if n else np.zeros(0)
        return cls(indptr, indices, values.astype(dtype))

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> SparseMatrix:
        """The set entries of a dense square matrix: not NaN (float), True (bool)."""
        dense = np.asarray(dense)
        if dense.ndim != 2 or dense.shape[0] != dense.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {dense.shape}")
        dtype = bool if dense.dtype == bool else np.float64
        rows = [SparseRow.from_dense(row) for row in dense]
        return cls.from_rows(len(dense), rows, dtype)

    @classmethod
    def from_csr(cls, matrix: csr_matrix) -> SparseMatrix:
        """A scipy matrix's stored entries (explicit zeros included), columns sorted."""
        matrix = csr_matrix(matrix, copy=True)
        matrix.sum_duplicates()
        matrix.sort_indices()
        return cls(_index(matrix.indptr), _index(matrix.indices), matrix.data.copy())

    def csr(self) -> csr_matrix:
        """The matrix as scipy CSR (stored entries only; explicit zeros are scores of 0)."""
        return csr_matrix((self.values, self.indices, self.indptr), shape=self.shape)

    def row(self, i: int) -> SparseRow:
        start, end = self.indptr[i], self.indptr[i + 1]
        return SparseRow(self.indices[start:end], self.values[start:end])

    def chosen(self, i: int) -> np.ndarray:
        """Row ``i``'s columns whose stored value is nonzero (True: e.g. a client's peers)."""
        row = self.row(i)
        return row.columns[row.values.astype(bool)]

    def rows(self) -> list[SparseRow]:
        return [self.row(i) for i in range(self.n)]

    def with_rows(self, rows: Mapping[int, SparseRow]) -> SparseMatrix:
        """A new matrix whose rows in ``rows`` are replaced (the others kept)."""
        if not rows:
            return self
        new = [rows[i] if i in rows else self.row(i) for i in range(self.n)]
        return SparseMatrix.from_rows(self.n, new, self.values.dtype.type)

    def submatrix(self, part: Sequence[int]) -> SparseMatrix:
        """Rows and columns ``part`` (in that order), renumbered 0..len(part)-1."""
        part = _index(part)
        return SparseMatrix.from_csr(self.csr()[part][:, part])

    def stored(self) -> SparseMatrix:
        """Where an entry is stored and finite, as a bool matrix (e.g. who scored whom)."""
        keep = np.isfinite(self.values) if self.values.dtype != bool else self.values
        return SparseMatrix.from_csr(
            csr_matrix(
                (keep[keep], self.indices[keep], _kept_indptr(self.indptr, keep)), self.shape
            )
        )

    def dense(self) -> np.ndarray:
        """A dense copy: NaN (float) or False (bool) where nothing is stored. O(N^2): for
        small federations, figures and tests only."""
        fill = False if self.values.dtype == bool else np.nan
        out = np.full(self.shape, fill, dtype=self.values.dtype)
        rows = np.repeat(np.arange(self.n), np.diff(self.indptr))
        out[rows, self.indices] = self.values
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        dense = self.dense()
        return dense if dtype is None else dense.astype(dtype)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        """Entry ``[i, j]``: its value, or NaN / False when not stored."""
        i, j = key
        row = self.row(int(i))
        at = np.searchsorted(row.columns, int(j))
        if at < len(row.columns) and row.columns[at] == j:
            return row.values[at]
        return self.values.dtype.type(False if self.values.dtype == bool else np.nan)


def _kept_indptr(indptr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The row pointers of a CSR matrix after dropping the entries where ``keep`` is False."""
    kept = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    return kept[indptr]
