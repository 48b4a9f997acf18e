"""Weight-only block quantization in onnxruntime's ``MatMulNBits`` layout.

A :class:`BlockQuantized` matrix is exactly what ``com.microsoft.MatMulNBits`` consumes: ``N`` output
rows, each cut into blocks of ``block_size`` input features along ``K``; a block stores integer codes
``q`` and the row's block has a ``scale`` and a ``zero point`` so that ``w = (q - zero_point) * scale``.
Codes of 4 bits are packed two per byte, the even element in the low nibble. Zero points are either
absent (the default ``2**(bits-1)``), packed ``uint8`` (``[N, ceil(blocks*bits/8)]``, same packing) or
``float32`` ``[N, blocks]`` (needed to pass GGUF Q4_1 blocks through without rounding).

The quantizers here are the plain ones (no calibration, no activation quantization): symmetric absmax
(the lm_head/embedding and every 8-bit weight) and asymmetric min/max (4-bit layer weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BLOCK_SIZE = 32


@dataclass(frozen=True, eq=False)
class BlockQuantized:
    """A ``[N, K]`` weight (Hugging Face ``Linear.weight`` orientation) quantized per block along K."""

    bits: int
    block_size: int
    k: int
    data: np.ndarray  # uint8 [N, blocks, block_size * bits // 8]
    scales: np.ndarray  # float32 [N, blocks]
    zero_points: np.ndarray | None = None  # None | uint8 packed | float32 [N, blocks]

    def __post_init__(self) -> None:
        n, blocks, blob = self.data.shape
        if self.bits not in (4, 8):
            raise ValueError(f"only 4- and 8-bit blocks are supported, not {self.bits}")
        if blob != self.block_size * self.bits // 8 or blocks != -(-self.k // self.block_size):
            raise ValueError(f"data shape {self.data.shape} does not fit K={self.k}, block {self.block_size}")
        if self.data.dtype != np.uint8 or self.scales.shape != (n, blocks):
            raise ValueError("data must be uint8 and scales [N, blocks]")

    @property
    def n(self) -> int:
        return int(self.data.shape[0])

    @property
    def blocks(self) -> int:
        return int(self.data.shape[1])

    @property
    def zero_point_kind(self) -> str:
        """``"default"``, ``"packed"`` (uint8) or ``"float"``."""
        if self.zero_points is None:
            return "default"
        return "float" if self.zero_points.dtype.kind == "f" else "packed"

    @property
    def nbytes(self) -> int:
        zp = 0 if self.zero_points is None else self.zero_points.nbytes
        return int(self.data.nbytes + self.scales.nbytes + zp)

    def codes(self) -> np.ndarray:
        """The integer codes, unpacked: uint8 ``[N, blocks, block_size]``."""
        return unpack_codes(self.data, self.bits)

    def zero_point_values(self) -> np.ndarray:
        """Zero points as float32 ``[N, blocks]`` whatever their storage."""
        if self.zero_points is None:
            return np.full(self.scales.shape, 2 ** (self.bits - 1), np.float32)
        if self.zero_point_kind == "float":
            return self.zero_points.astype(np.float32)
        return unpack_codes(self.zero_points, self.bits)[:, : self.blocks].astype(np.float32)

    def dequantize(self) -> np.ndarray:
        """The float32 ``[N, K]`` matrix these blocks stand for (MatMulNBits' own formula)."""
        q = self.codes().astype(np.float32)
        w = (q - self.zero_point_values()[..., None]) * self.scales[..., None]
        return w.reshape(self.n, -1)[:, : self.k]

    def take_rows(self, index: np.ndarray) -> BlockQuantized:
        """Reorder/select output rows (e.g. undo llama.cpp's q/k permutation) without touching codes."""
        zp = None if self.zero_points is None else self.zero_points[index]
        return BlockQuantized(self.bits, self.block_size, self.k, self.data[index], self.scales[index], zp)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Unpack along the last axis: for 4 bits each byte yields (low nibble, high nibble)."""
    if bits == 8:
        return packed
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`unpack_codes`; an odd-length last axis is padded with a zero nibble."""
    codes = codes.astype(np.uint8)
    if bits == 8:
        return codes
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def can_concat_rows(parts: Sequence[BlockQuantized]) -> bool:
    first = parts[0]
    return all(
        (p.bits, p.block_size, p.k, p.zero_point_kind) == (first.bits, first.block_size, first.k, first.zero_point_kind)
        for p in parts
    )


def concat_rows(parts: Sequence[BlockQuantized]) -> BlockQuantized:
    """Stack along N (fused QKV or gate/up projections); all parts must share bits/block/K/zp kind."""
    if not can_concat_rows(parts):
        raise ValueError("blocks of different layouts cannot be concatenated")
    first = parts[0]
    zp = None if first.zero_points is None else np.concatenate([p.zero_points for p in parts])
    return BlockQuantized(
        first.bits,
        first.block_size,
        first.k,
        np.concatenate([p.data for p in parts]),
        np.concatenate([p.scales for p in parts]),
        zp,
    )


def split_rows(w: np.ndarray | BlockQuantized, sizes: Sequence[int]) -> list[np.ndarray | BlockQuantized]:
    """The inverse of :func:`concat_rows` (a fused projection read apart), for blocks or floats."""
    edges = np.cumsum([0, *sizes])
    if not isinstance(w, BlockQuantized):
        return [w[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [
        BlockQuantized(
            w.bits, w.block_size, w.k, np.ascontiguousarray(w.data[a:b]), np.ascontiguousarray(w.scales[a:b]),
            None if w.zero_points is None else np.ascontiguousarray(w.zero_points[a:b]),
        )
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def _blocks(w: np.ndarray, block_size: int) -> np.ndarray:
    """``[N, K]`` float -> ``[N, blocks, block_size]`` float32, zero-padding K to whole blocks."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    pad = -k % block_size
    if pad:
        w = np.concatenate([w, np.zeros((n, pad), np.float32)], axis=1)
    return w.reshape(n, -1, block_size)


def quantize_symmetric(w: np.ndarray, bits: int, block_size: int = BLOCK_SIZE) -> BlockQuantized:
    """Absmax quantization with the default zero point (no zero-point tensor).

    8 bits: codes ``round(w/s) + 128`` with ``s = absmax/127``. 4 bits: llama.cpp's Q4_0 rule, the
    largest-magnitude value maps to code 0 (``s = -that/8``), so all 16 levels are used. No zero-point
    tensor means ``GatherBlockQuantized`` can share the lm_head's codes for a tied embedding.
    """
    blocks = _blocks(w, block_size)
    if bits == 8:
        scale = np.abs(blocks).max(axis=-1) / 127.0
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        q = np.clip(np.rint(blocks * inv[..., None]), -127, 127) + 128
    elif bits == 4:
        idx = np.abs(blocks).argmax(axis=-1)[..., None]
        scale = np.take_along_axis(blocks, idx, axis=-1)[..., 0] / -8.0
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        q = np.clip(np.rint(blocks * inv[..., None]) + 8, 0, 15)
    else:
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    return BlockQuantized(bits, block_size, w.shape[1], pack_codes(q, bits), scale.astype(np.float32))


def quantize_asymmetric(w: np.ndarray, bits: int = 4, block_size: int = BLOCK_SIZE) -> BlockQuantized:
    """Min/max quantization with a packed uint8 zero point per block (0 stays exactly representable)."""
    blocks = _blocks(w, block_size)
    qmax = 2**bits - 1
    lo = np.minimum(blocks.min(axis=-1), 0.0)
    hi = np.maximum(blocks.max(axis=-1), 0.0)
    scale = (hi - lo) / qmax
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    zp = np.clip(np.rint(-lo * inv), 0, qmax)
    q = np.clip(np.rint(blocks * inv[..., None]) + zp[..., None], 0, qmax)
    return BlockQuantized(
        bits, block_size, w.shape[1], pack_codes(q, bits), scale.astype(np.float32), pack_codes(zp, bits)
    )
