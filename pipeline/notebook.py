"""Execute the master notebook (notebooks/efficient_feature_matching.ipynb) and write its rendered copy.

    python -m pipeline.notebook                      # its defaults (the demo preset) -> docs/demo/notebook.md
    python -m pipeline.notebook --param 'OUT="runs/nb"' --dest /tmp/notebook.md

The notebook is stored without outputs; the rendered copy (Markdown, its figures beside it in ``notebook_files/``)
is generated from a real run, never edited by hand. ``--param NAME=VALUE`` (a Python literal) is appended to the
notebook's parameter cell, as papermill does.
"""

from __future__ import annotations

import ast
import difflib
import re
import time
from pathlib import Path
from typing import Any

from helper import ArgumentParser, InputError, atomic_path, first_line, int_in, run_cli, writable_location

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "efficient_feature_matching.ipynb"
RENDERED = ROOT / "docs" / "demo" / "notebook.md"


def with_parameters(nb: Any, params: dict[str, Any]) -> Any:
    """The notebook with ``NAME = value`` lines appended to its parameter cell (the cell tagged 'parameters'); a
    name that cell does not set is an InputError naming the nearest one it does."""
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        raise InputError("the notebook has no cell tagged 'parameters'")
    known = [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)]  # fmt: skip
    for name in params:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(known)}"
            raise InputError(f"--param {name}: the notebook has no such parameter ({hint})")
    cell.source += "".join(f"\n{name} = {value!r}" for name, value in params.items())
    return nb


def execute(params: dict[str, Any] | None = None, timeout: int = 3600, notebook: Path = NOTEBOOK) -> Any:
    """Run the notebook top to bottom in a fresh kernel (working folder: notebooks/) and return it with outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = with_parameters(nbformat.read(notebook, as_version=4), params or {})
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    )
    client.execute()
    return nb


BAR = re.compile(r"^(?P<label>[^\n]*?):\s*\d+%\|")  # a tqdm line: "label:  42%|████      | 5/12 [...]"


def final_progress(text: str) -> str:
    """A cell's stream output as a terminal leaves it: each progress bar in its last state. Lines rewritten with a
    carriage return keep their last version, cursor-up escapes (nested bars) are dropped, and of the lines of one bar
    between two other lines only the last is kept."""
    out: list[str] = []
    pending: dict[str, str] = {}  # label -> its latest line, since the last line that is no bar
    for line in text.replace("\x1b[A", "").split("\n"):
        line = line.split("\r")[-1]
        bar = BAR.match(line)
        if bar:
            pending[bar["label"]] = line
            continue
        out += pending.values()
        pending.clear()
        out.append(line)
    return "\n".join([*out, *pending.values()])


def render_markdown(nb: Any, dest: str | Path) -> Path:
    """Write an executed notebook as Markdown (``dest``) with its figures as PNG files in ``<stem>_files/``."""
    from nbconvert import MarkdownExporter
    from traitlets.config import Config

    dest = Path(dest)
    files = f"{dest.stem}_files"
    # A cell's stream outputs merged and each carriage-return-rewritten line (a progress bar) left in its last state
    exporter = MarkdownExporter(config=Config(CoalesceStreamsPreprocessor={"enabled": True}))
    for cell in nb.cells:  # consecutive writes to one stream merged first: a bar is rewritten across them
        merged: list[Any] = []
        for output in cell.get("outputs", []):
            last = merged[-1] if merged else None
            if output.get("output_type") == "stream" and last is not None and last.get("name") == output.get("name"):
                last["text"] += output["text"]
            else:
                merged.append(output)
        for output in merged:
            if output.get("output_type") == "stream":
                output["text"] = final_progress(output["text"])
        if "outputs" in cell:
            cell["outputs"] = merged
    body, resources = exporter.from_notebook_node(nb, resources={"output_files_dir": files})
    folder = dest.parent / files
    for old in folder.glob("*.png") if folder.is_dir() else []:
        old.unlink()  # figures of an earlier rendering
    for name, data in resources.get("outputs", {}).items():
        with atomic_path(dest.parent / name) as tmp:
            tmp.write_bytes(data)
    with atomic_path(dest) as tmp:
        tmp.write_text(re.sub(r"\n{3,}", "\n\n", body))
    return dest


def _param(item: str) -> tuple[str, Any]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip().isidentifier():
        raise InputError(f"--param {item!r}: expected NAME=VALUE, e.g. 'PRESET=\"demo\"'")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        raise InputError(f"--param {item!r}: the value is not a Python literal (strings need quotes)") from None


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description="Execute the master notebook and write its rendered copy with outputs")
    p.add_argument("--dest", default=str(RENDERED), help="the Markdown file to write (figures go beside it)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="set a parameter")
    p.add_argument("--timeout", type=int_in(1, 10**6), default=3600, help="seconds one cell may run")
    args = p.parse_args(argv)
    params = dict(_param(item) for item in args.param)
    dest = writable_location(args.dest, what="--dest")
    start = time.perf_counter()
    from nbclient.exceptions import CellExecutionError

    try:
        nb = execute(params, args.timeout)
    except CellExecutionError as e:  # a cell failed: its error in one line (its traceback is in the kernel's output)
        raise InputError(f"the notebook stopped: {e.ename}: {first_line(Exception(e.evalue))[:200]}") from None
    minutes = (time.perf_counter() - start) / 60
    print(f"executed in {minutes:.1f} min; rendered copy: {render_markdown(nb, dest)}")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
