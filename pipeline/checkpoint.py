"""Checkpoints this project writes: compressed weights plus everything needed to rebuild the network.

A pruned network has other shapes than its config says, so a checkpoint records the matcher's zoo name,
its config and the few int attributes that shapes cannot tell (attention head counts and dims). Loading
rebuilds the default network, resizes each layer to the stored weights and loads strictly, so the caller never
needs to know the shapes.

Tensors are stored by kind: a weight with compression state (compression/state.py) in the form its state
encodes — k-means codes packed at their bit width plus the codebook (and a bitmask of the non-zeros when
pruned), integer-grid codes plus per-channel scales (and the activation quantizer) — and decoded by the state
class registered for that kind; other float tensors of at most 256 distinct values (shared by k-means without a
layer state) as those values plus a code per element (version 5); other weights with many zeros as a bitmask plus
the non-zero values; the rest as they are. Parts that run in a runtime backend (backends/: a real-int8 detector or
matching network) are stored as their graph's bytes instead of tensors. Then every packed stream, float tensor and
graph is entropy-coded where that makes it smaller (compression/coding.py: version 4; older versions still load).
Loading gives back exactly the weights that were evaluated (bit-exact). Model size in this project means the bytes of
this file. This module sits above the models and the compression toolkits: it imports both, neither imports it.

A checkpoint may come from a stranger, so loading trusts nothing in it: version 7 carries a SHA-256 of each entry's
bytes, of the index and of each graph; every decompression stops at the size its entry declares, and the declared
sizes are bounded before anything is decoded; dtypes must be the model's, only ``SHAPE_ATTRS`` may be set, a network
whose shapes the file changed must run once (``trial_run``), and graphs that refer to external data are refused
(``backends.self_contained``). Whatever fails is a one-line WeightsError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import backends.modules
import pruning  # noqa: F401  (registers the compression methods and the states checkpoints decode)
import quantization  # noqa: F401
from backends import graph_modules
from compression import coding
from compression.state import STATES, attach, encoder
from compression.tensors import pack_bits, resized, unpack_bits
from helper import atomic_path, first_line, git_commit
from models.matching import TRIAL_ERRORS, Matcher, available_matchers, build_matcher, matcher_class, trial_run
from models.weights import WeightsError, read_state_dict

FORMAT = "efficient-feature-matching/checkpoint"
VERSION = 7  # 1: plain state_dict; 2: compressed tensors; 3: with ONNX Runtime parts; 4: entropy-coded;
# 5: shared-value tensors without a layer state; 6: the entries packed into one byte stream; 7: with digests
SHAPE_ATTRS = ("num_heads", "dim", "head_dim", "embed_dim")  # ints that shapes alone do not determine
MAX_INDEX_BYTES = 64 << 20  # a packed index is a few kB per hundred tensors
MAX_DECODED_BYTES = 4 << 30  # all tensors of a checkpoint, decoded: far above any matcher of the zoo


def shape_attrs(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per-module int attributes that define shapes (head counts and dims)."""
    found = {}
    for name, module in model.named_modules():
        attrs = {a: getattr(module, a) for a in SHAPE_ATTRS if isinstance(getattr(module, a, None), int)}
        if attrs:
            found[name] = attrs
    return found


def fit_shapes(model: nn.Module, state: dict[str, torch.Tensor], attrs: dict[str, dict[str, int]]) -> bool:
    """Replace every layer whose stored weight has another shape by one of the stored shape; set shape attrs (only
    those of ``SHAPE_ATTRS`` that the module has, to a positive int). True if the network changed."""
    changed = False
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight" if name else "weight")
        own = getattr(module, "weight", None)
        if weight is None or not isinstance(own, torch.Tensor) or own.shape == weight.shape:
            continue
        new = resized(module, weight.shape)
        if new is None:
            raise WeightsError(f"cannot resize {name} ({type(module).__name__}) to {tuple(weight.shape)}")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        changed = True
    if not isinstance(attrs, dict):
        raise WeightsError(f"its shape attributes are a {type(attrs).__name__}, not a mapping")
    modules = dict(model.named_modules())
    for name, values in attrs.items():
        if name not in modules or not isinstance(values, dict):
            raise WeightsError(f"it sets attributes of {name!r}, which {type(model).__name__} does not have")
        for attr, value in values.items():
            own = getattr(modules[name], attr, None)
            if attr not in SHAPE_ATTRS or not isinstance(own, int):
                raise WeightsError(f"it sets {name}.{attr}, which is not a shape attribute ({', '.join(SHAPE_ATTRS)})")
            if type(value) is not int or not 0 < value <= 1 << 16:
                raise WeightsError(f"it sets {name}.{attr} to {value!r}, not a positive int")
            changed |= own != value
            setattr(modules[name], attr, value)
    return changed


def encode(name: str, tensor: torch.Tensor, modules: dict[str, nn.Module]) -> dict[str, Any]:
    """One state_dict entry in its compact form: as its layer's compression state encodes it, else sparse
    (bitmask + values) when at least a tenth is zero, else plain."""
    t = tensor.detach().cpu()
    layer = modules.get(name.rsplit(".", 1)[0] if "." in name else "")
    state = encoder(layer) if layer is not None and name.endswith("weight") else None
    entry = state.encode(layer, t) if state is not None else None
    if entry is not None:
        return entry
    shared = _shared(t)
    if shared is not None:
        return shared
    if t.is_floating_point() and t.ndim >= 2 and (t == 0).float().mean() >= 0.1:
        mask = t != 0
        return {"kind": "sparse", "shape": list(t.shape), "mask": pack_bits(mask, 1), "values": t[mask]}
    return {"kind": "dense", "tensor": t}


def _shared(t: torch.Tensor) -> dict[str, Any] | None:
    """A float tensor of at most 256 distinct values (shared by k-means without a layer state, e.g. ALIKED's
    aggregation weights) as its values and a code per element, when that gives back its very bits."""
    if not t.is_floating_point() or t.ndim < 2 or t.numel() < 1024:
        return None
    values = torch.unique(t)
    if values.numel() > 256:
        return None
    codes = torch.searchsorted(values, t.flatten())
    if not torch.equal(values[codes].view(torch.uint8), t.flatten().contiguous().view(torch.uint8)):
        return None  # e.g. -0.0 beside 0.0: not one value in its bits
    bits = max(1, (values.numel() - 1).bit_length())
    return {"kind": "shared", "shape": list(t.shape), "bits": bits, "codebook": values,
            "codes": pack_bits(codes, bits), "count": t.numel()}  # fmt: skip


def decode(entry: dict[str, Any]) -> tuple[torch.Tensor, list[Any]]:
    """(tensor, compression states to attach to its layer) of an encoded entry."""
    if entry["kind"] == "dense":
        return entry["tensor"], []
    if entry["kind"] == "sparse":
        shape = entry["shape"]
        numel = int(np.prod(shape))
        mask = unpack_bits(entry["mask"], 1, numel).bool()
        flat = torch.zeros(numel, dtype=entry["values"].dtype)
        flat[mask] = entry["values"]
        return flat.view(shape), []
    if entry["kind"] == "shared":
        codes = unpack_bits(entry["codes"], entry["bits"], entry["count"])
        return entry["codebook"][codes.long()].view(entry["shape"]), []
    if entry["kind"] not in STATES:
        raise WeightsError(f"unknown tensor kind {entry['kind']!r} (known: dense, sparse, shared, {', '.join(STATES)})")
    return STATES[entry["kind"]].decode(entry)


def save_checkpoint(matcher: Matcher, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``matcher`` atomically as a compact, self-describing checkpoint (zoo name, config, git commit)."""
    path = Path(path)
    modules = dict(matcher.named_modules())
    graphs = graph_modules(matcher)
    state = {}
    for name, graph in graphs.items():  # what runs in PyTorch after a graph, as the part's own weights
        state.update({f"{name}.{k}": v for k, v in graph.python_state().items()})
    for key, value in matcher.state_dict().items():
        if any(key.startswith(name + ".") for name in graphs):  # the graph holds these weights
            continue
        if ".parametrizations." in key:  # e.g. QAT: store the weight as the forward pass sees it
            owner, _, rest = key.partition(".parametrizations.")
            attr = rest.split(".")[0]
            if rest == f"{attr}.original":
                state[f"{owner}.{attr}"] = getattr(modules[owner], attr).detach()
            continue
        state[key] = value
    payload = {
        "format": FORMAT,
        "version": 3 if graphs else 2,  # readable by older code whenever it can be
        "matcher": matcher.name,
        "config": {**matcher.config},
        "attrs": {k: v for k, v in shape_attrs(matcher).items() if not any(k.startswith(g + ".") for g in graphs)},
        "tensors": {k: coding.code(encode(k, v, modules)) for k, v in state.items()},
        "meta": {"git_commit": git_commit(), **(meta or {})},
    }
    if graphs:
        # as a uint8 tensor: torch.save pickles a bytes object as latin-1 text, half again as large
        payload["onnx"] = {
            name: {"class": m.kind, "backend": m.backend, **coding.code_bytes(m.graph_bytes)}
            for name, m in graphs.items()
        }
    if any("coded" in e for e in [*payload["tensors"].values(), *payload.get("onnx", {}).values()]):
        payload["version"] = 4
    if any(e["kind"] == "shared" for e in payload["tensors"].values()):  # (float16 fields: version 4 code reads
        payload["version"] = 5  # them, loading casts them to the parameters' float32)
    packed = _pack(payload["tensors"])
    if packed is not None:
        del payload["tensors"]
        payload.update(version=7, packed=packed)
        for graph in payload.get("onnx", {}).values():
            graph["sha256"] = hashlib.sha256(graph["graph"].numpy().tobytes()).hexdigest()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _pack(entries: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor] | None:
    """The entries as one byte stream (``data``: every tensor's bytes, one after the other) and a zlib-compressed
    JSON ``index`` of each entry's fields in order: a tensor's dtype, shape and place in the stream, any other value
    as it is. None when a value would not come back from JSON as it was (a tuple, a key that is not a string)."""
    index, chunks, offset = {}, [], 0
    for name, entry in entries.items():
        fields, digest = [], hashlib.sha256()
        for field, value in entry.items():
            if isinstance(value, torch.Tensor):
                raw = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                fields.append([field, "tensor", [str(value.dtype).split(".")[-1], list(value.shape), offset, len(raw)]])
                chunks.append(raw)
                digest.update(raw)
                offset += len(raw)
            elif _json_exact(value):
                fields.append([field, "value", value])
            else:
                return None
        index[name] = [*fields, ["sha256", "digest", digest.hexdigest()]]
    text = zlib.compress(json.dumps(index, separators=(",", ":")).encode(), 9)
    return {
        "index": torch.frombuffer(bytearray(text), dtype=torch.uint8),
        "data": torch.frombuffer(bytearray(b"".join(chunks) or b"\0"), dtype=torch.uint8)[:offset],
        "index_sha256": hashlib.sha256(text).hexdigest(),
    }


def _json_exact(value: Any) -> bool:
    try:
        return json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):  # e.g. a NumPy number
        return False


def _unpack(packed: dict[str, Any], digests: bool = True) -> dict[str, dict[str, Any]]:
    """The entries ``_pack`` packed, each tensor with its very bytes. A ValueError names what is damaged: a digest
    that does not match (version 7), an index that is not one, a tensor whose declared dtype, shape and size
    disagree or that lies past the end of the stream."""
    text = packed["index"].numpy().tobytes()
    if digests and hashlib.sha256(text).hexdigest() != packed["index_sha256"]:
        raise ValueError("its index does not match its digest")
    index = json.loads(coding.inflate(text, None, "its index", most=MAX_INDEX_BYTES))
    if not isinstance(index, dict):
        raise ValueError("its index is not a mapping")
    data = packed["data"].numpy().tobytes()
    entries = {}
    for name, fields in index.items():
        entry, digest, expected = {}, hashlib.sha256(), None
        for field, kind, value in fields:
            if kind == "digest":
                expected = value
            elif kind != "tensor":
                entry[field] = value
            else:
                entry[field] = _tensor_at(data, f"{name}.{field}", value)
                digest.update(data[value[2] : value[2] + value[3]])
        if digests and digest.hexdigest() != expected:
            raise ValueError(f"the bytes of {name} do not match its digest")
        entries[name] = entry
    return entries


def _tensor_at(data: bytes, what: str, declared: Any) -> torch.Tensor:
    """The tensor an index entry ``[dtype, shape, offset, size]`` declares in the packed stream ``data``."""
    dtype, shape, offset, size = declared
    dtype = coding.dtype_named(dtype, what)
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise ValueError(f"{what} declares the shape {shape!r}")
    if type(offset) is not int or type(size) is not int or offset < 0 or size != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{what} declares {size!r} bytes at {offset!r} for its shape {shape}")
    if offset + size > len(data):
        raise ValueError(f"{what} lies past the end of the packed tensors")
    if not size:  # torch.frombuffer takes no empty buffer
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data[offset : offset + size]), dtype=torch.uint8).view(dtype).reshape(shape)


def checkpoint_entries(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A checkpoint's tensor entries as ``save_checkpoint`` encoded and coded them, whatever its version."""
    if "packed" in payload:
        return _unpack(payload["packed"], digests=payload.get("version", 0) >= 7)
    if "tensors" in payload:
        return payload["tensors"]
    return {k: {"kind": "dense", "tensor": v} for k, v in payload["state_dict"].items()}  # version 1


def coding_summary(path: str | os.PathLike) -> dict[str, float]:
    """How a checkpoint's bytes are spent: ``code_bytes`` (its bit-packed codes and masks as stored, entropy-coded)
    against ``code_entropy_bytes`` (their empirical order-0 entropy: the least any coder of independent symbols
    needs), and ``other_bytes`` (float tensors and graphs as stored)."""
    payload = read_state_dict(path)
    out = {"code_bytes": 0.0, "code_entropy_bytes": 0.0, "other_bytes": 0.0}
    for entry in checkpoint_entries(payload).values():
        plain = coding.decode(entry)
        for field, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue
            stored = value.numel() * value.element_size()
            if coding.symbol_stream(plain, field) is not None and plain[field].dtype == torch.uint8:
                out["code_bytes"] += stored
                out["code_entropy_bytes"] += coding.stream_entropy_bytes(plain, field)
            else:
                out["other_bytes"] += stored
    out["other_bytes"] += sum(g["graph"].numel() for g in payload.get("onnx", {}).values())
    return out


def stored_bytes(path: str | os.PathLike, prefix: str = "") -> int:
    """Bytes of the tensors a checkpoint stores under ``prefix`` (``detector.``, ``matcher.``; all by default: the
    file less its header and pickling)."""
    total = 0
    for name, entry in checkpoint_entries(read_state_dict(path)).items():
        if name.startswith(prefix):
            total += sum(v.numel() * v.element_size() for v in entry.values() if isinstance(v, torch.Tensor))
    return total


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike) -> Matcher:
    """Rebuild the Matcher saved by ``save_checkpoint``, whatever its pruned shapes. A file that is not such a
    checkpoint, or whose header or entries are damaged, is a WeightsError naming the file and the culprit."""
    payload = read_state_dict(path)
    if not is_checkpoint(payload):
        raise WeightsError(f"{path} is not a checkpoint written by this project (no '{FORMAT}' header)")
    version = payload.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise WeightsError(f"{path} has checkpoint version {version!r}; this code reads up to {VERSION}")
    try:
        return _rebuild(payload, path)
    except WeightsError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, zlib.error) as e:
        detail = {KeyError: f"missing field {e}", ValueError: first_line(e)[:200]}.get(type(e))
        detail = detail or f"{type(e).__name__}: {first_line(e)[:160]}"
        raise WeightsError(f"{path} is a damaged checkpoint ({detail})") from None


def _rebuild(payload: dict[str, Any], path: str | os.PathLike) -> Matcher:
    if payload.get("matcher") not in available_matchers():
        raise WeightsError(
            f"{path} names the matcher {payload.get('matcher')!r}, which this code does not have "
            f"({', '.join(available_matchers())})"
        )
    config = _without_weights(payload["matcher"], payload["config"])
    matcher = build_matcher(payload["matcher"], config)
    entries = checkpoint_entries(payload)
    declared = sum(_declared_bytes(e) for e in entries.values())
    if declared > MAX_DECODED_BYTES:
        raise WeightsError(f"{path} declares {declared} bytes of tensors, more than any matcher has: refused")
    graphs = payload.get("onnx", {})
    for name, graph in graphs.items():
        if payload["version"] >= 7 and hashlib.sha256(graph["graph"].numpy().tobytes()).hexdigest() != graph["sha256"]:
            raise ValueError(f"the graph of {name} does not match its digest")
    decoded = {}
    for key, entry in entries.items():
        try:
            decoded[key] = decode(coding.decode(entry))
        except ValueError as e:
            raise ValueError(f"{key}: {first_line(e)}") from None
    state = {k: t for k, (t, _) in decoded.items()}
    try:
        changed = fit_shapes(matcher, state, payload.get("attrs", {}))
    except WeightsError as e:
        raise WeightsError(f"{path} does not fit {payload['matcher']}: {e}") from None
    own = matcher.state_dict()
    for key, tensor in state.items():  # a float stored as integers (or the reverse) would load cast, silently
        mine = own.get(key)
        if mine is not None and (mine.is_floating_point() != tensor.is_floating_point() or
                                 (not mine.is_floating_point() and mine.dtype != tensor.dtype)):  # fmt: skip
            raise WeightsError(f"{path} stores {key} as {tensor.dtype}, where {payload['matcher']} has {mine.dtype}")
    try:
        missing, unexpected = matcher.load_state_dict(state, strict=not graphs)
    except RuntimeError as e:
        raise WeightsError(f"{path} does not fit {payload['matcher']}: {first_line(e)}") from None
    missing = [k for k in missing if not any(k.startswith(name + ".") for name in graphs)]
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit {payload['matcher']}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for name, graph in graphs.items():  # the PyTorch module there keeps the settings, the graph computes
        parent, _, attr = name.rpartition(".")
        owner = matcher.get_submodule(parent)
        try:
            module = backends.modules.restore(
                graph["class"],
                getattr(owner, attr),
                coding.decode_bytes(graph),
                graph.get("backend", "onnxruntime"),
            )
        except Exception as e:  # onnxruntime's errors (InvalidProtobuf, …) derive from Exception only
            raise WeightsError(f"{path}: its ONNX graph for {name} cannot be opened ({first_line(e)[:160]})") from None
        setattr(owner, attr, module)
    modules = dict(matcher.named_modules())
    for name, (_, found) in decoded.items():
        layer = modules.get(name.rsplit(".", 1)[0])
        for state in found:  # codes and scales stay with the layer (finetuning, re-saving, running as evaluated)
            attach(layer, state)
    matcher.eval()
    if changed:
        _trial_run(matcher, path)
    return matcher


def _declared_bytes(entry: dict[str, Any]) -> int:
    """The bytes an entry decodes to, by its declared shapes and counts (before anything is decompressed)."""
    total = sum(v.numel() * v.element_size() for v in entry.values() if isinstance(v, torch.Tensor))
    total += sum(coding.declared_bytes(entry, field) or 0 for field in entry.get("coded") or {})
    for key in ("shape", "count"):
        value = entry.get(key)
        if value is not None:
            total += 8 * (math.prod(int(d) for d in value) if isinstance(value, list) else int(value))
    return total


def _trial_run(matcher: Matcher, path: str | os.PathLike) -> None:
    """``trial_run`` of a network whose shapes the checkpoint changed: shapes that load but do not chain (a layer
    resized to fit a damaged file) fail here, as a WeightsError, not in the user's run."""
    try:
        trial_run(matcher)
    except TRIAL_ERRORS as e:
        raise WeightsError(f"{path} loads but its network does not run ({first_line(e)[:160]})") from None


def _without_weights(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The same config of matcher ``name`` with every network built randomly (the checkpoint brings the weights)."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    schema = matcher_class(name).config_schema()
    for part in ("superpoint", "superglue"):
        if part in schema:
            config[part] = {**config.get(part, {}), "weights": None}
    config["pretrained"] = False
    return config
