"""Small shared utilities: seeding, device, image I/O, atomic writes, timing, one-line CLI errors."""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import errno
import glob
import hashlib
import json
import logging
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """Bad user input (missing file, corrupt image, malformed line, bad setting, unusable output location);
    its message is one line for the user that names the culprit."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (with the next one when it ends in ':', as torch's
    "Error(s) in loading state_dict for X:"), or its type name when it has none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


MAX_SIDE = 8192  # px: larger images do not fit a detector's activations in a CPU machine's memory


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(force_cpu: bool = False) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not force_cpu else "cpu")


def decode_image(data: bytes, what: str) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array, as its pixels are stored: an EXIF orientation tag is not
    applied, so that detection and ground truth (homographies, intrinsics) see the same pixels. ``what`` names the
    source in the error."""
    if not data:
        raise InputError(f"image {what} is empty (0 bytes)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as e:
        raise InputError(f"cannot decode image {what}: {first_line(e)}") from None
    if image is None:
        raise InputError(f"cannot decode image {what}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


MAX_IMAGE_BYTES = 4 * MAX_SIDE * MAX_SIDE + (1 << 20)  # an uncompressed RGBA image of MAX_SIDE px a side


def image_bytes(path: Path) -> bytes:
    """The bytes of an image file; one larger than any image file of ``MAX_SIDE`` px a side is an OSError naming it
    (read whole, it would only exhaust memory)."""
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise OSError(errno.EFBIG, f"{size} bytes, more than an image file of {MAX_SIDE} px a side", str(path))
    return path.read_bytes()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8; missing, oversized or corrupt files raise InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        data = image_bytes(path)
    except OSError as e:
        raise InputError(f"cannot read image {path}: {e.strerror}") from None
    return decode_image(data, str(path))


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file (a leading byte-order mark dropped); missing or undecodable files raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A JSON file; a missing or malformed one raises InputError with the line and column."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None


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


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return True


def remove_stale_temps(folder: Path, name: str) -> None:
    """Remove the temp files (or folders) ``.{name}.{host}-{pid}.*`` that a killed process of this host left."""
    start = f".{name}.{_host()}-"
    for stale in folder.glob(f"{glob.escape(start)}*"):
        pid = stale.name[len(start) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            logger.info("removing %s, left by an interrupted run", stale)
            with contextlib.suppress(OSError):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def temp_prefix(path: Path) -> str:
    """Prefix of the temp files written for ``path``: hidden, and naming the host and process that writes."""
    return f".{path.name}.{_host()}-{os.getpid()}."


def file_sha1(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes (what identifies a checkpoint in stage records and run folders)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def safe_name(value: Any, what: str) -> str:
    """``value`` as a name that becomes one file or folder name inside its run folder: a non-empty string of at most
    100 characters without path separators, control characters or a leading dot ('..' would climb out of the folder);
    anything else is an InputError naming ``what`` and the value."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 100
        or value.startswith(".")
        or any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise InputError(
            f"{what} {value!r} cannot name a file: use at most 100 characters, no '/', '\\', control characters "
            "or leading '.'"
        )
    return value


def regular_output(path: str | os.PathLike) -> Path:
    """``path`` if it is a regular file or does not exist yet; a symlink, FIFO, device or socket there is an
    InputError: results are written as a new regular file that replaces the old one, never through a link or into a
    device (as root, ``/dev/stdout`` would otherwise be replaced)."""
    path = Path(path)
    if os.path.lexists(path) and (path.is_symlink() or not (path.is_file() or path.is_dir())):
        kind = "a symlink" if path.is_symlink() else "not a regular file (a FIFO, device or socket)"
        raise InputError(f"{path} is {kind}: give a new path or a regular file to replace")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block finishes (an existing symlink
    or special file there is refused: ``regular_output``). Temp files that killed processes left for ``path`` are
    removed first."""
    path = regular_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; results are ordinary files
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or first_line(e), str(path)) from None  # a write to a file object: named
    except RuntimeError as e:  # torch.save's writer ("file write failed"): a full disk or quota, named
        if "write" not in str(e).lower():
            raise
        full = shutil.disk_usage(path.parent).free < (64 << 20)
        raise OSError(errno.ENOSPC if full else errno.EIO, os.strerror(errno.ENOSPC if full else errno.EIO),
                      str(path)) from None  # fmt: skip
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


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else str(float(x))  # JSON has no inf/nan
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=2) + "\n")


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


def git_commit() -> str | None:
    """The commit of this project's checkout (with '-dirty' if it has changes), or None outside git."""
    import subprocess

    root = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
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


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Check:
    """What one setting accepts beyond the type of its default (which is the rule when there is no Check).

    ``kind``: the type(s) the value is coerced to, tried in order; ``words``: strings accepted as they are
    ('auto'); ``lo``/``hi``: bounds (``open`` excludes them); ``choices``; ``nullable``; lists: ``length`` and
    ``each`` (the check of every element); dicts: ``schema`` (known keys and their defaults) with ``checks`` for
    them, ``values`` (the check of every value of a dict with free keys), or ``free`` (taken as is).
    """

    kind: Any = None
    lo: float | None = None
    hi: float | None = None
    open: bool = False
    choices: tuple = ()
    nullable: bool = False
    words: tuple = ()
    length: int | None = None
    each: "Check | None" = None
    schema: dict | None = None
    checks: dict | None = None
    values: "Check | None" = None
    free: bool = False


def _describe(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    return " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in kinds)


def _coerce(value: Any, kind: type) -> Any:
    """``value`` as ``kind``, or ValueError. YAML 1.1 reads '1e-4' as a string: such strings become numbers."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif kind is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif kind is dict:
        if isinstance(value, dict):
            return value
    raise ValueError


def _checked(value: Any, default: Any, check: Check | None, name: str) -> Any:
    check = check or Check()
    if value is None:
        if check.nullable or (default is None and check.kind is None):
            return None
        raise InputError(f"setting '{name}' needs a value ({_describe(check.kind or type(default))})")
    if isinstance(value, str) and value in check.words:
        return value
    kind = check.kind or (type(default) if default is not None else None)
    for k in () if kind is None else kind if isinstance(kind, tuple) else (kind,):  # no kind: any value's own
        try:
            value = _coerce(value, k)
            break
        except ValueError:
            continue
    else:
        if kind is not None:
            words = "".join(f" or '{w}'" for w in check.words)
            raise InputError(f"setting '{name}' must be {_describe(kind)}{words}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # no setting means anything at inf or NaN
        raise InputError(f"setting '{name}' must be a finite number, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = check.lo is not None and (value <= check.lo if check.open else value < check.lo)
        high = check.hi is not None and (value >= check.hi if check.open else value > check.hi)
        if low or high or value != value:
            brackets = "()" if check.open else "[]"
            lo = "-inf" if check.lo is None else check.lo
            hi = "inf" if check.hi is None else check.hi
            raise InputError(f"setting '{name}' must be in {brackets[0]}{lo}, {hi}{brackets[1]}, got {value!r}")
    if check.choices and value not in check.choices:
        raise InputError(f"setting '{name}' must be one of {', '.join(map(str, check.choices))}; got {value!r}")
    if isinstance(value, list):
        if check.length is not None and len(value) != check.length:
            raise InputError(f"setting '{name}' takes {check.length} values, got {len(value)}")
        each = check.each
        if each is None and isinstance(default, list) and default:
            each = Check(kind=type(default[0]) if not isinstance(default[0], dict) else dict)
        if each is not None:
            value = [
                _checked(v, default[0] if isinstance(default, list) and default else None, each, f"{name}[{i}]")
                for i, v in enumerate(value)
            ]
    if isinstance(value, dict) and not check.free:
        if check.values is not None:
            value = {str(k): _checked(v, None, check.values, f"{name}.{k}") for k, v in value.items()}
        elif check.schema is not None or isinstance(default, dict):
            schema = check.schema if check.schema is not None else default
            value = check_config(value, schema, check.checks or {}, f"{name}.")
    return value


def check_config(
    config: dict[str, Any], defaults: dict[str, Any], checks: dict[str, Check] | None = None, prefix: str = ""
) -> dict[str, Any]:
    """``config`` with every value checked against ``defaults`` and ``checks`` (keys: setting names relative to
    ``defaults``, nested ones dotted): an unknown key is an error naming the nearest known one; values are
    coerced to the type of their default or rejected with the key and the expected type."""
    if not isinstance(config, dict):
        raise InputError(f"setting '{prefix.rstrip('.') or 'config'}' must be a mapping, got {config!r}")
    checks = checks or {}
    out = {}
    for key, value in config.items():
        key = str(key)
        if key not in defaults:
            near = difflib.get_close_matches(key, [str(k) for k in defaults], n=1, cutoff=0.6)
            hint = f"did you mean '{prefix}{near[0]}'?" if near else f"known: {', '.join(map(str, defaults))}"
            raise InputError(f"unknown setting '{prefix}{key}' ({hint})")
        nested = {k[len(key) + 1 :]: c for k, c in checks.items() if k.startswith(key + ".")}
        check = checks.get(key)
        if nested and (check is None or check.checks is None):
            check = Check(**{**(check.__dict__ if check else {}), "checks": nested})
        out[key] = _checked(value, defaults[key], check, prefix + key)
    return out


def _yaml_error(where: str, e: Exception) -> InputError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or first_line(e)
    at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    return InputError(f"{where}{at}: invalid YAML ({problem})")


MAX_CONFIG_VALUES = 100_000  # a config's values with its YAML aliases expanded: real ones have a few hundred


def _bounded(value: Any, where: str) -> Any:
    """``value`` unless, with its aliases expanded, it holds more than ``MAX_CONFIG_VALUES`` values (an alias bomb:
    a few lines that expand to billions of values in whatever walks them), an InputError then."""
    todo, count = [value], 0
    while todo:
        item = todo.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise InputError(f"{where}: more than {MAX_CONFIG_VALUES} values once its YAML aliases are expanded")
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return value


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file; a syntax error keeps its line and column; aliases bounded (``_bounded``)."""
    import yaml

    text = read_text(path, "config file")
    try:
        return _bounded(yaml.safe_load(text), str(path))
    except yaml.YAMLError as e:
        raise _yaml_error(str(path), e) from None


def parse_override(item: str) -> dict[str, Any]:
    """``key.sub=value`` (value parsed as YAML) as a nested dict."""
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise InputError(f"override must look like key.sub=value, got '{item}'")
    try:
        parsed = _bounded(yaml.safe_load(value), f"--set {key}")
    except yaml.YAMLError as e:
        raise _yaml_error(f"--set {item}", e) from None
    node: dict[str, Any] = {}
    cursor = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = parsed
    return node


def load_config(
    paths: str | os.PathLike | Sequence[str | os.PathLike] | None,
    overrides: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """YAML files merged in order over ``defaults``, then ``key.sub=value`` overrides; the caller checks the result
    against its schema (``check_config``) before anything runs."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    config = dict(defaults or {})
    for path in paths:
        loaded = read_yaml(path)
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: a config file holds a mapping of settings, got {type(loaded).__name__}")
        config = merge_config(config, loaded)
    for item in overrides:
        config = merge_config(config, parse_override(item))
    return config


def config_digest(config: Any) -> str:
    """A short digest of a JSON-able config (keys sorted), naming what produced a result."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_run_config(folder: str | os.PathLike, config: dict[str, Any], **extra: Any) -> None:
    """Record what produced a run folder: its config and the git commit (and ``extra`` fields)."""
    import yaml

    with atomic_path(Path(folder) / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({**config, "git_commit": git_commit(), **extra}, sort_keys=False))


# ----------------------------------------------------------------------------- command lines


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit status 2), like every other bad input; every command line
    takes ``-v`` (``run_cli`` reads it: the libraries' INFO logs too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("-v", "--verbose", action="store_true", help="show the libraries' INFO logs too")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def int_in(lo: int | None = None, hi: int | None = None, also: tuple[int, ...] = ()) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (or one of ``also``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value in also or ((lo is None or value >= lo) and (hi is None or value <= hi)):
            return value
        extra = "".join(f" or {a}" for a in also)
        raise argparse.ArgumentTypeError(
            f"expected an integer in [{lo if lo is not None else '-inf'}, "
            f"{hi if hi is not None else 'inf'}]{extra}, got {value}"
        )

    parse.__name__ = "integer"
    return parse


def float_in(lo: float | None = None, hi: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected a number in [{lo}, {hi}], got {text}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_in(1)
image_side = int_in(16, MAX_SIDE)  # --size W H: detectors need a few 8-16 px cells
keypoint_limit = int_in(1, also=(-1,))  # --max_keypoints: a budget, or -1 for all (as the official script)


def check_resize(resize: Sequence[int], flag: str = "--resize") -> list[int]:
    """The official --resize: W H, a max dimension, or -1 (no resize); anything else is an InputError."""
    resize = list(resize)
    if resize == [-1]:
        return resize
    if len(resize) == 2 and resize[1] == -1:  # the official script reads "W -1" as "max dimension W"
        resize = resize[:1]
    if len(resize) not in (1, 2) or not all(1 <= v <= MAX_SIDE for v in resize):
        raise InputError(
            f"{flag} takes W H or a max dimension in [1, {MAX_SIDE}] px, or -1 (no resize); got "
            f"{' '.join(map(str, resize))}"
        )
    return resize


def writable_location(path: str | os.PathLike, folder: bool = False, what: str | None = None) -> Path:
    """Check, before any work starts, that ``path`` (a file, or with ``folder`` a folder) can be written;
    nothing is created. A bad location is an InputError naming it (and ``what`` asked for it)."""
    path = Path(path).expanduser()
    label = f"{what}: " if what else ""
    if not folder:
        try:
            regular_output(path)
        except InputError as e:
            raise InputError(f"{label}{e}") from None
    if path.exists() and folder and not path.is_dir():
        raise InputError(f"{label}{path} is a file, not a folder")
    if path.is_dir() and not folder:
        raise InputError(f"{label}{path} is a folder, not a file")
    probe = path if folder else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{label}cannot create {path}: {probe} is a file")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".write-check.")
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise InputError(f"{label}cannot write in {probe} ({e.strerror})") from None
    return path


_FILE_ERRORS = {
    errno.EIO,
    errno.EFBIG,
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENOSPC,
    errno.EROFS,
    errno.EDQUOT,
    errno.EEXIST,
    errno.ENAMETOOLONG,
}
_NO_MEMORY = ("can't allocate memory", "not enough memory", "out of memory", "bad_alloc", "insufficient memory",
              "failed to allocate")  # fmt: skip


PROJECT_LOGGERS = ("__main__", "backends", "compression", "data", "efm", "evaluate", "experiments", "finetune",
                   "helper", "match_pairs", "models", "pipeline", "profiling", "pruning", "quantization",
                   "visualizations")  # fmt: skip


def run_cli(main: Callable[..., Any], argv: Sequence[str] | None = None) -> None:
    """Run a command line's ``main(argv)``: the known failure classes (bad input, bad output location, files
    that cannot be read or written, memory exhausted by the sizes asked for) become one line on stderr and exit
    status 2; anything else is a bug and shows its traceback."""
    verbose = any(a in ("-v", "--verbose") for a in (sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for name in PROJECT_LOGGERS:  # the project's own progress notes; the libraries' INFO only with -v
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        main(argv)
    except InputError as e:  # WeightsError is one too
        _fail(first_line(e))
    except OSError as e:
        if e.errno not in _FILE_ERRORS:
            raise
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        advice = {
            errno.ENOSPC: "free some space or write elsewhere",
            errno.EDQUOT: "free some space or write elsewhere",
        }
        hint = f" ({advice[e.errno]})" if e.errno in advice else ""
        _fail(f"{where + ': ' if where else ''}{e.strerror or first_line(e)}{hint}")
    except MemoryError as e:
        _fail(f"out of memory ({first_line(e)}): use smaller images (--size/--resize) or fewer keypoints")
    except (RuntimeError, cv2.error) as e:  # torch's and OpenCV's allocation failures
        if not any(m in str(e).lower() for m in _NO_MEMORY):
            raise
        _fail(f"out of memory ({first_line(e)[:200]}): use smaller images (--size/--resize) or fewer keypoints")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


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
