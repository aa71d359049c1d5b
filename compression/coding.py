"""Lossless entropy coding of checkpoint entries (the Huffman stage of Deep Compression), bit-exact on load.

A checkpoint entry (pipeline/checkpoint.py) holds bit-packed symbol streams — the k-means or integer-grid ``codes``
of a weight (``bits`` each, ``count`` of them) and the 1-bit ``mask`` of its non-zeros (one per element of
``shape``) — and float tensors (dense weights, the non-zero values of a sparse one, codebooks, scales). Each is coded
with Python's ``zlib`` (deflate; Huffman codes of the bytes alone, where LZ77 matches measured larger):

* a symbol stream as it is packed when its symbols fill bytes (two 4-bit codes, eight mask bits …), else one symbol
  per byte (3, 5, 6 or 7 bits): Huffman codes of those bytes cost close to the stream's empirical entropy
  (``stream_entropy_bytes``, the limit of coding independent symbols); measured on LightGlue's k-means codes:
  0.5 % above it at 4 and 2 bits, 3 % at 3 bits, where LZMA came 1.3 % above at 4 bits and 20× slower;
* a float tensor by byte planes: the plane of its most significant bytes (sign and exponent, which repeat across
  similar weights) is coded, the lower mantissa planes are noise and stay as they are (LightGlue's float32 weights:
  17 % smaller in 0.1 s, by Huffman codes alone — LZ77 matches made it larger and 17× slower; LZMA on every plane
  gained nothing more in 300× the time).

A float32 tensor whose values are all float16 values (norms, biases and codebooks rounded to float16 by
``quantization.half``) is stored in float16 first, and given back in float32 with the very same bits.

A field is coded only where that makes it smaller. ``entry["coded"]`` names the coded fields and how; ``decode``
gives back the very tensors that were coded (tests compare them bit for bit). Entries without ``coded`` (checkpoints
of version 3 and older) pass through unchanged.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import torch

from .tensors import pack_bits, unpack_bits

BYTES = "zlib"  # a uint8 tensor (bit-packed symbols), coded as its bytes
SYMBOLS = "zlib-symbols"  # a stream of 3-, 5-, 6- or 7-bit symbols, coded one symbol per byte
PLANES = "zlib-top-plane"  # a float tensor: its most significant byte plane coded, the others as they are
_MIN_BYTES = 256  # smaller tensors are not worth it
_LEVEL = 6


MAX_BYTES = 1 << 30  # the most one decoded field may take: 20x the largest matcher of the zoo in float32


DTYPES = {str(d).split(".")[-1]: d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8,
          torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)}  # fmt: skip


def dtype_named(name: Any, what: str) -> torch.dtype:
    """The tensor dtype a checkpoint names (ValueError for any other name)."""
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(f"{what} declares the dtype {name!r}")
    return DTYPES[name]


def inflate(data: bytes, size: int | None, what: str, most: int = MAX_BYTES) -> bytes:
    """``data`` decompressed, refused (ValueError naming ``what``) unless it gives exactly ``size`` bytes (at most
    ``most`` where no size is declared): a damaged or crafted stream never grows past what its entry declares."""
    cap = most if size is None else size
    if cap > most:
        raise ValueError(f"{what} declares {cap} bytes, more than the {most} any matcher needs")
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, cap + 1)
    if len(out) > cap or inflater.unconsumed_tail:
        declared = "it declares" if size is not None else "it may take"
        raise ValueError(f"{what} decompresses to more than the {cap} bytes {declared}")
    if size is not None and len(out) != size:
        raise ValueError(f"{what} decompresses to {len(out)} bytes, not the {size} it declares")
    return out


def declared_bytes(entry: dict[str, Any], field: str) -> int | None:
    """How many bytes the coded ``field`` of ``entry`` decodes to, by what the entry declares (None: not declared)."""
    how = (entry.get("coded") or {}).get(field)
    stream = symbol_stream(entry, field)
    if how == SYMBOLS and stream is not None:
        return stream[1]
    if how == BYTES and stream is not None:
        return (stream[0] * stream[1] + 7) // 8
    if how == PLANES:
        dtype = dtype_named(entry[f"{field}.dtype"], field)
        return math.prod(int(d) for d in entry[f"{field}.shape"]) * torch.empty((), dtype=dtype).element_size()
    return None


def symbol_stream(entry: dict[str, Any], field: str) -> tuple[int, int] | None:
    """(bits, count) of a bit-packed symbol field of ``entry``, or None if the field is not one."""
    if field == "codes" and "bits" in entry and "count" in entry:
        return int(entry["bits"]), int(entry["count"])
    if field == "mask" and "shape" in entry:
        return 1, math.prod(entry["shape"])
    return None


def _zlib(data: bytes, huffman: bool = False) -> torch.Tensor:
    """Deflate; ``huffman``: Huffman codes only, no LZ77 matches (the short random repeats of weights' symbols are
    not worth a match: measured 0.5–11 % smaller on k-means codes, 16 % on exponent bytes, and faster)."""
    strategy = zlib.Z_HUFFMAN_ONLY if huffman else zlib.Z_DEFAULT_STRATEGY
    coder = zlib.compressobj(_LEVEL, zlib.DEFLATED, 15, 9, strategy)
    return torch.frombuffer(bytearray(coder.compress(data) + coder.flush()), dtype=torch.uint8)


def exactly_half(t: torch.Tensor) -> bool:
    """Whether a float32 tensor holds float16 values only (so float16 stores its very bits)."""
    flat = t.detach().cpu().contiguous().view(-1)
    return t.dtype == torch.float32 and torch.equal(flat.half().float().view(torch.int32), flat.view(torch.int32))


def code(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with its bit-packed streams and float tensors entropy-coded where that makes them smaller; float32
    tensors of float16 values (``exactly_half``) are stored in float16 (``entry["half"]`` names them)."""
    out, coded, half = dict(entry), {}, []
    for field, value in entry.items():
        if isinstance(value, torch.Tensor) and value.numel() and exactly_half(value):
            out[field] = value = value.half()
            half.append(field)
        if not isinstance(value, torch.Tensor) or value.numel() * value.element_size() < _MIN_BYTES:
            continue
        raw = value.detach().cpu().contiguous().view(-1)
        stream = symbol_stream(entry, field) if raw.dtype == torch.uint8 else None
        if stream is not None and 8 % stream[0]:  # symbols that straddle bytes: Huffman would see no symbol
            packed, how = _zlib(unpack_bits(raw, *stream).numpy().astype(np.uint8).tobytes(), huffman=True), SYMBOLS
        elif raw.dtype == torch.uint8:
            packed, how = _zlib(raw.numpy().tobytes(), huffman=stream is not None), BYTES
        elif raw.is_floating_point():
            planes = np.ascontiguousarray(raw.view(torch.uint8).numpy().reshape(-1, raw.element_size()).T)
            top = _zlib(planes[-1].tobytes(), huffman=True)  # little-endian: the last byte holds sign and exponent
            packed, how = torch.cat([top, torch.from_numpy(planes[:-1].reshape(-1))]), PLANES
            out[f"{field}.top"] = top.numel()
        else:
            continue
        if packed.numel() < raw.numel() * raw.element_size():
            out[field], coded[field] = packed, how
            if how == PLANES:
                out[f"{field}.dtype"], out[f"{field}.shape"] = str(raw.dtype).split(".")[-1], list(value.shape)
        else:
            out.pop(f"{field}.top", None)
    if coded:
        out["coded"] = coded
    if half:
        out["half"] = half
    return out


def decode(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as it was before ``code`` (bit-exact): bit-packed codes and masks, float tensors."""
    coded = entry.get("coded") or {}
    if not coded and "half" not in entry:
        return entry
    out = {k: v for k, v in entry.items() if k not in ("coded", "half")}
    for field, how in coded.items():
        stored = entry[field].numpy().tobytes()
        data = inflate(stored, declared_bytes(entry, field), field) if how in (BYTES, SYMBOLS) else b""
        if how == BYTES:
            out[field] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        elif how == SYMBOLS:
            symbols = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))
            out[field] = pack_bits(symbols, symbol_stream(entry, field)[0])
        elif how == PLANES:
            dtype = dtype_named(out.pop(f"{field}.dtype"), field)
            shape = out.pop(f"{field}.shape")
            size = torch.empty((), dtype=dtype).element_size()
            top = out.pop(f"{field}.top")
            count = math.prod(shape)
            if len(stored) - top != (size - 1) * count:
                raise ValueError(
                    f"{field} holds {len(stored) - top} plain bytes, not {(size - 1) * count} as its shape"
                )
            planes = np.frombuffer(stored[top:] + inflate(stored[:top], count, field), dtype=np.uint8).reshape(size, -1)
            out[field] = torch.from_numpy(planes.T.copy()).view(dtype).reshape(shape)
        else:
            raise ValueError(f"unknown coding {how!r} of {field}")
    for field in entry.get("half", []):
        if out[field].dtype != torch.float16:
            raise ValueError(f"{field} is stored as {out[field].dtype}, not as the float16 it declares")
        out[field] = out[field].float()
    return out


def code_bytes(data: bytes) -> dict[str, Any]:
    """An ONNX graph's bytes as checkpoint fields: ``graph`` (uint8), coded (``coded``) if that is smaller."""
    packed = _zlib(data)
    if packed.numel() < len(data):
        return {"graph": packed, "coded": BYTES}
    return {"graph": torch.frombuffer(bytearray(data), dtype=torch.uint8)}


def decode_bytes(fields: dict[str, Any]) -> bytes:
    """The graph bytes that ``code_bytes`` stored."""
    data = fields["graph"].numpy().tobytes()
    return inflate(data, None, "graph") if fields.get("coded") == BYTES else data


def stream_entropy_bytes(entry: dict[str, Any], field: str) -> float:
    """The empirical order-0 entropy, in bytes, of the symbol stream ``field`` of a (decoded) entry: the least any
    coder of independent symbols needs for it."""
    symbols = unpack_bits(entry[field], *symbol_stream(entry, field)).numpy()
    p = np.bincount(symbols) / max(1, len(symbols))
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) * len(symbols) / 8
