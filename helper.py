"""Small shared utilities: seeding, device, image I/O, atomic writes, timing, one-line CLI errors."""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import random
import sys
import tempfile
import time
import urllib.request
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np
import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """Bad user input (missing file, corrupt image, malformed line); its message is one line for the user."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(force_cpu: bool = False) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not force_cpu else "cpu")


def decode_image(data: bytes, what: str) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array; ``what`` names the source in the error."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot decode image {what}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8; missing or corrupt files raise InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    return decode_image(path.read_bytes(), str(path))


def resize_to(image: np.ndarray, resize: list[int] | tuple[int, ...], resize_float: bool = False) -> np.ndarray:
    """Resize like the official match_pairs.py: [W, H] exactly, [max_dim] keeping the aspect, or [-1] not at all."""
    h, w = image.shape[:2]
    if len(resize) == 2:
        w_new, h_new = resize
    elif len(resize) == 1 and resize[0] > 0:
        scale = resize[0] / max(h, w)
        w_new, h_new = int(round(w * scale)), int(round(h * scale))
    elif len(resize) == 1 and resize[0] == -1:
        return image
    else:
        raise InputError(f"--resize takes one or two numbers (or -1), got {list(resize)}")
    if (w_new, h_new) == (w, h):
        return image
    if resize_float:
        return cv2.resize(image.astype(np.float32), (w_new, h_new))
    return cv2.resize(image, (w_new, h_new), interpolation=cv2.INTER_AREA)


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """H×W×3 (or H×W) image in 0..255 -> 1×C×H×W float tensor in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(image)).float() / 255.0
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t[None].to(device)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; results are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download(url: str, dest: str | os.PathLike, verify: Callable[[Path], None] | None = None) -> Path:
    """Download ``url`` to ``dest`` with a progress bar; ``dest`` appears only complete (and, with ``verify``,
    only if ``verify(tmp)`` returns without raising)."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        if verify is not None:
            verify(tmp)
    return dest


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else str(float(x))  # JSON has no inf/nan
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class Timer:
    """Context manager measuring wall time in seconds (synchronising CUDA when used)."""

    def __enter__(self) -> "Timer":
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


_AFTER_STEP: dict[str, tuple[weakref.WeakSet, Callable[[Any], None]]] = {}
_STEP_HOOK = None


def after_every_step(kind: str, fn: Callable[[Any], None], module: Any) -> None:
    """Call ``fn(module)`` after each step of any optimizer while ``module`` lives (kinds run in order of first
    use). Compression toolkits keep their constraints this way without the caller having to remember a call."""
    global _STEP_HOOK
    from torch.optim.optimizer import register_optimizer_step_post_hook

    if kind not in _AFTER_STEP:
        _AFTER_STEP[kind] = (weakref.WeakSet(), fn)
    _AFTER_STEP[kind][0].add(module)
    if _STEP_HOOK is None:
        def run(*_: Any) -> None:
            with torch.no_grad():
                for modules, function in _AFTER_STEP.values():
                    for m in list(modules):
                        function(m)

        _STEP_HOOK = register_optimizer_step_post_hook(run)


def stop_after_every_step(kind: str, module: Any) -> None:
    if kind in _AFTER_STEP:
        _AFTER_STEP[kind][0].discard(module)


def git_commit() -> str | None:
    """The commit of this project's checkout (with '-dirty' if it has changes), or None outside git."""
    import subprocess

    root = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    commit = head.stdout.strip()
    return (commit + ("-dirty" if dirty.stdout.strip() else "")) or None


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``override`` wins, nested dicts are merged key by key."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge_config(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | os.PathLike | None, overrides: Iterable[str] = (),
                defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """YAML config merged over ``defaults``, then ``key.sub=value`` overrides (values parsed as YAML)."""
    import yaml

    config = dict(defaults or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
        config = merge_config(config, loaded)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"override must look like key.sub=value, got '{item}'")
        node: dict[str, Any] = {}
        cursor = node
        parts = key.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = yaml.safe_load(value)
        config = merge_config(config, node)
    return config


def write_run_config(folder: str | os.PathLike, config: dict[str, Any]) -> None:
    """Record what produced a run folder: its config and the git commit."""
    import yaml

    with atomic_path(Path(folder) / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({**config, "git_commit": git_commit()}, sort_keys=False))


def run_cli(main: Callable[[], Any]) -> None:
    """Run a command-line ``main``: known errors become one line on stderr and exit status 2."""
    from models.weights import WeightsError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (InputError, WeightsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)  # shapes: FlopCounterMode passes them to a custom formula


def count_macs(fn: Callable[[], Any]) -> int:
    """Multiply-accumulates of one call, counted by torch's FlopCounterMode (sees einsum/bmm, not only modules).

    torch's registry has no formula for the CPU kernel of ``scaled_dot_product_attention`` (LightGlue's
    self-attention): without the one given here, attention on CPU would count as free."""
    from torch.utils.flop_counter import FlopCounterMode

    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {cpu_sdpa: _cpu_attention_flops} if cpu_sdpa is not None else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() // 2


def measure_latency(fn: Callable[[], Any], repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median and interquartile range of the wall time of ``fn`` in ms, after warm-up (CUDA synchronised)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            with Timer() as t:
                fn()
            times.append(t.seconds * 1000)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return {"latency_ms": float(median), "latency_ms_iqr": float(q3 - q1)}
