"""From a model's raw output to class ids: argmax, bilinear upsampling of low-resolution logits, nearest resizes.

``upsample_bilinear`` followed by ``np.argmax`` is the reference for ``low_res_logits`` outputs: the
scores of every input pixel, as the model's own last layer computed them. ``BilinearArgmax`` gives
the same class map without upsampling most pixels (see its docstring), several times faster.

Everything here is vectorised numpy. ``BilinearArgmax`` keeps its larger scratch arrays between
frames: on the development machine an add into a new 300 KB array took 5x as long as into a kept
one (fresh memory from the system, page faults).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# Mixed cells (see BilinearArgmax) are solved in groups by how many classes can win in them:
# up to 2, up to 4, the rest. On CamVid photos 53 % (LR-ASPP) and 80 % (DeepLabV3+) of them have 2.
CANDIDATE_GROUPS = (2, 4)


def _bilinear_sources(first: int, count: int, size: int, length: int):
    """Samples ``first .. first + count - 1`` of ``length`` values resized to ``size`` with half-pixel
    centres: the two source indices and the weight of the second (as ``tf.image.resize`` computes them)."""
    position = (np.arange(first, first + count, dtype=np.float64) + 0.5) * (length / size) - 0.5
    low = np.floor(position)
    weight = (position - low).astype(np.float32)
    low = low.astype(np.intp)
    return np.clip(low, 0, length - 1), np.clip(low + 1, 0, length - 1), weight


def upsample_bilinear(scores: np.ndarray, upsampling, height: int, width: int) -> np.ndarray:
    """Low-resolution scores on the input pixels: resized bilinearly (half-pixel centres, as Keras'
    ``UpSampling2D(interpolation="bilinear")`` and TFLite's RESIZE_BILINEAR) to ``upsampling.size``,
    of which the ``height`` x ``width`` window at ``upsampling.offset`` is computed.

    The reference for ``BilinearArgmax`` (and slow: it computes every score of every pixel).

    Args:
      scores: (h, w, K) logits; integer (quantized) ones may be passed raw: a positive scale and a
        zero point do not change which class is largest after a weighted mean.
      upsampling: the model's ``tfseg_lite.metadata.Upsampling``.
      height, width: the model's input size.

    Returns:
      (height, width, K) float32.
    """
    scores = np.asarray(scores, np.float32)
    (size_h, size_w), (top, left) = upsampling.size, upsampling.offset
    c0, c1, cw = _bilinear_sources(left, width, size_w, scores.shape[1])
    r0, r1, rw = _bilinear_sources(top, height, size_h, scores.shape[0])
    rows = scores[:, c0] + (scores[:, c1] - scores[:, c0]) * cw[None, :, None]  # width first, as TensorFlow
    return rows[r0] + (rows[r1] - rows[r0]) * rw[:, None, None]


def _label_dtype(num_classes: int):
    return np.uint8 if num_classes <= 256 else np.int32


class _Cells:
    """One axis of a bilinear resize, its samples grouped into cells: consecutive samples that blend
    the same two source values (one cell per pair of neighbouring low-resolution pixels, plus the
    clamped ones at the ends).

    Attributes:
      low, high: (cells,) the two source indices of each cell.
      lengths: (cells,) samples per cell.
      index: (span, cells) each cell's sample indices, the last one repeated up to the longest cell's.
      weight: (span, cells) float32 weights of ``high`` for those samples.
    """

    def __init__(self, first: int, count: int, size: int, length: int):
        low, high, weight = _bilinear_sources(first, count, size, length)
        starts = np.flatnonzero(np.r_[True, (low[1:] != low[:-1]) | (high[1:] != high[:-1])])
        self.low, self.high = low[starts], high[starts]
        self.lengths = np.diff(np.r_[starts, count])
        self.index = np.ascontiguousarray(starts + np.minimum(np.arange(self.lengths.max())[:, None], self.lengths - 1))
        self.weight = weight[self.index]


class BilinearArgmax:
    """``np.argmax(upsample_bilinear(scores, upsampling, height, width), axis=-1)``, without
    upsampling most pixels.

    The input pixels fall into cells, each between (up to) four neighbouring low-resolution pixels,
    its corners. Each score of a pixel is a weighted mean of the class's scores at its cell's
    corners (weights >= 0, summing to 1), so:

    - where one class wins at all four corners it wins in the whole cell: the cell is filled with it
      (LR-ASPP on CamVid's test images: 77 % of the cells; DeepLabV3+ at stride 4: 89 %);
    - in the other cells a class whose largest corner score is below another class's smallest one
      never wins: only the remaining candidates (2 in most cells) are upsampled there, with the
      reference's own float32 operations, and compared, ties going to the lowest class id as with
      ``np.argmax``.

    So the class map is the reference's for integer (quantized) scores, and for float32 scores
    except where two classes' upsampled scores are within float32 rounding of each other.

    Keeps scratch arrays between calls: one instance per thread.

    Args:
      low_size: (h, w) of the scores.
      upsampling: the model's ``tfseg_lite.metadata.Upsampling``.
      height, width: the model's input size.
    """

    def __init__(self, low_size, upsampling, height: int, width: int):
        (size_h, size_w), (top, left) = upsampling.size, upsampling.offset
        self.low_size = (int(low_size[0]), int(low_size[1]))
        self.height, self.width = int(height), int(width)
        self._rows = _Cells(top, self.height, size_h, self.low_size[0])
        self._cols = _Cells(left, self.width, size_w, self.low_size[1])
        self._scratch = {}

    def _buffer(self, name: str, shape, dtype) -> np.ndarray:
        """A kept scratch array of this shape and dtype (contents undefined)."""
        size = math.prod(shape)
        buffer = self._scratch.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = self._scratch[name] = np.empty(max(size, 0 if buffer is None else 2 * buffer.size), dtype)
        return buffer[:size].reshape(shape)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """(height, width) class ids (uint8 for up to 256 classes, else int32) of (h, w, K) scores."""
        scores = np.asarray(scores)
        if scores.ndim != 3 or scores.shape[:2] != self.low_size:
            raise ValueError(f"expected scores of shape ({self.low_size[0]}, {self.low_size[1]}, K), got {scores.shape}")
        labels = np.argmax(scores, axis=-1).astype(_label_dtype(scores.shape[-1]))
        rows, cols = self._rows, self._cols
        top, bottom = labels[rows.low], labels[rows.high]
        corner = top[:, cols.low]
        mixed = (corner != top[:, cols.high]) | (corner != bottom[:, cols.low]) | (corner != bottom[:, cols.high])
        class_map = corner.repeat(cols.lengths, axis=1).repeat(rows.lengths, axis=0)
        cell_rows, cell_cols = np.nonzero(mixed)
        if cell_rows.size:
            self._solve_mixed(scores, class_map, cell_rows, cell_cols, labels)
        return class_map

    def _solve_mixed(self, scores, class_map, cell_rows, cell_cols, labels):
        """Writes the argmax in the cells whose corners disagree into ``class_map``.

        Arrays are laid out with the cells on the last axis (the long one: numpy's loops are fast
        over it, slow over the short class and in-cell axes).
        """
        rows, cols = self._rows, self._cols
        top, bottom = rows.low[cell_rows] * self.low_size[1], rows.high[cell_rows] * self.low_size[1]
        left, right = cols.low[cell_cols], cols.high[cell_cols]
        index = np.stack([top + left, top + right, bottom + left, bottom + right])  # (4, cells) into (h * w)
        corners = np.take(scores.reshape(-1, scores.shape[-1]), index, axis=0)  # (4, cells, K)
        corners = np.ascontiguousarray(corners.transpose(0, 2, 1), np.float32)  # (4, K, cells)
        candidate = corners.max(axis=0) >= corners.min(axis=0).max(axis=0)  # (K, cells)
        # A corner's winner is a candidate anyway, unless NaN scores make the comparisons fail.
        candidate[labels.reshape(-1)[index[0]], np.arange(index.shape[1])] = True
        count = candidate.sum(axis=0)
        order = np.argsort(count, kind="stable")  # cells by candidate count: one slice per group
        count, cells = count[order], count.size
        # (max count, cells): each cell's candidates in increasing class order, padded with its first.
        cell, klass = np.nonzero(candidate[:, order].T)
        first = np.cumsum(count) - count
        slots = np.empty((int(count[-1]), cells), np.intp)
        slots[:] = klass[first]
        slots[np.arange(cell.size) - first[cell], cell] = klass
        values = np.take(corners.reshape(4, -1), slots * cells + order, axis=1)  # (4, max count, cells)
        slots = slots.astype(class_map.dtype)
        cell_rows, cell_cols = cell_rows[order], cell_cols[order]
        weights = np.take(rows.weight, cell_rows, axis=1), np.take(cols.weight, cell_cols, axis=1)  # (span, cells)
        pixels = np.take(rows.index, cell_rows, axis=1)[:, None, :], np.take(cols.index, cell_cols, axis=1)[None]
        bounds = np.searchsorted(count, [g for g in CANDIDATE_GROUPS if g < count[-1]], side="right")
        start = 0
        for stop in (*bounds, cells):
            if stop > start:
                part = slice(start, stop)
                ids = self._argmax(values[:, : count[stop - 1], part], slots[:, part], weights[0][:, part], weights[1][:, part])
                class_map[pixels[0][..., part], pixels[1][..., part]] = ids  # padded samples repeat a pixel and its id
            start = stop

    def _argmax(self, values, slots, row_weight, col_weight) -> np.ndarray:
        """(span_r, span_c, n) class ids of the samples of n cells: the best of their k candidates
        ``slots`` (k, n), given their (4, k, n) corner scores and the cells' (span, n) weights."""
        v = values[:, :, None, :]
        # The reference's operations in its order (width first), so that the results are the same floats.
        top = v[0] + (v[1] - v[0]) * col_weight  # (k, span_c, n)
        diff = v[2] + (v[3] - v[2]) * col_weight - top
        k, (span_r, n), span_c = len(values[0]), row_weight.shape, col_weight.shape[0]
        upsampled = self._buffer("scores", (k, span_r, span_c, n), np.float32)
        np.multiply(diff[:, None], row_weight[None, :, None, :], out=upsampled)
        np.add(upsampled, top[:, None], out=upsampled)
        best, better = upsampled[0], self._buffer("better", (span_r, span_c, n), bool)
        if k == 1:  # only with NaN scores
            return np.broadcast_to(slots[0], best.shape)
        np.greater(upsampled[1], best, out=better)  # strictly: on ties the earlier, lower class id stays
        if k == 2:
            return np.where(better, slots[1], slots[0])
        dtype = np.uint8 if k <= 256 else np.intp
        choice, slot = better.astype(dtype), self._buffer("slot", better.shape, dtype)
        for s in range(2, k):
            np.maximum(best, upsampled[s - 1], out=best)
            np.greater(upsampled[s], best, out=better)
            # Slot s where it is better; slots only grow, so a maximum does it (faster than copyto's where=).
            np.maximum(choice, np.multiply(better, s, out=slot, dtype=dtype), out=choice)
        index = np.multiply(choice, n, out=self._buffer("index", choice.shape, np.intp), dtype=np.intp)
        return np.take(slots[:k], np.add(index, np.arange(n), out=index))


def upsample_argmax(scores: np.ndarray, upsampling, height: int, width: int) -> np.ndarray:
    """``np.argmax(upsample_bilinear(...), axis=-1)`` as ``BilinearArgmax`` computes it (which see).

    Returns:
      (height, width) class ids: uint8 for up to 256 classes, else int32.
    """
    return BilinearArgmax(np.shape(scores)[:2], upsampling, height, width)(scores)


def _nearest_sources(count: int, input_length: int, offset: int, size: int, length: int) -> np.ndarray:
    """For ``count`` image pixels spanning the model's ``input_length`` pixels: the low-resolution
    index each one falls in (half-pixel centres; the input window sits at ``offset`` in ``size``)."""
    position = ((np.arange(count, dtype=np.float64) + 0.5) * (input_length / count) + offset) * (length / size)
    return np.clip(np.floor(position).astype(np.intp), 0, length - 1)


def resize_low_res_nearest(class_map: np.ndarray, upsampling, input_size, height: int, width: int) -> np.ndarray:
    """Low-resolution class ids (h, w) resized with nearest straight to an image of (height, width).

    The same as resizing them to ``upsampling.size`` (nearest, half-pixel centres), keeping the
    input-sized window at ``upsampling.offset`` and resizing that to the image, in one gather.
    """
    rows = _nearest_sources(height, input_size[0], upsampling.offset[0], upsampling.size[0], class_map.shape[0])
    cols = _nearest_sources(width, input_size[1], upsampling.offset[1], upsampling.size[1], class_map.shape[1])
    # Columns of the small map first, then whole rows: far faster than one 2-D fancy index.
    return np.take(np.take(class_map, cols, axis=1), rows, axis=0)


def resize_nearest(class_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map with Pillow's NEAREST (labels are never blended).

    Pillow rather than index arithmetic so results equal ``Image.resize(..., NEAREST)`` exactly,
    including at sample points that fall exactly between two pixels.

    Args:
      class_map: (h, w) uint8 (up to 256 classes) or other integer class ids.
      height, width: the size wanted.

    Returns:
      (height, width) class ids, uint8 if the input was uint8, else int32; the same array if it
      already has that size.
    """
    if class_map.shape == (height, width):
        return class_map
    if class_map.dtype == np.uint8:
        labels = Image.fromarray(class_map, "L")
    else:
        labels = Image.fromarray(class_map.astype(np.int32), "I")  # 32-bit mode: any class count
    return np.asarray(labels.resize((width, height), Image.NEAREST))


__all__ = ["BilinearArgmax", "CANDIDATE_GROUPS", "resize_low_res_nearest", "resize_nearest", "upsample_argmax",
           "upsample_bilinear"]
