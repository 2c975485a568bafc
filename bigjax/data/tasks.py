"""Labelled tasks made from the embedded `stdlib_code` corpus (no download), as JSONL record files.

`write_stdlib_functions(out_dir)` writes `train.jsonl` and `validation.jsonl`: one record per function
or method of the standard library that has a docstring, with
  code      its source with the docstring removed (dedented),
  summary   the docstring's first line,
  package   the top-level package or module it comes from (`email`, `asyncio`, `json`, ...).
The split follows `stdlib_code`'s (crc32 of the file's path), so no function of a validation file was
seen in pre-training. The records are a text-to-text task (code → summary) and, with `package` as the
label, a classification task; both read with `data.source='<out_dir>/*.jsonl'`.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig

from bigjax.data import sources


def _functions(text: str):
  """(code without docstring, first docstring line) of each documented function in a module's source."""
  try:
    tree = ast.parse(text)
  except (SyntaxError, ValueError):  # A few test files are deliberately invalid.
    return
  lines = text.splitlines()
  for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    doc = ast.get_docstring(node)
    if not doc or not doc.strip() or len(node.body) < 2:
      continue
    summary = doc.strip().splitlines()[0].strip()
    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    doc_node = node.body[0]
    kept = lines[first - 1:doc_node.lineno - 1] + lines[doc_node.end_lineno:node.end_lineno]
    indent = min((len(l) - len(l.lstrip()) for l in kept if l.strip()), default=0)
    yield "\n".join(l[indent:] for l in kept), summary


def write_stdlib_functions(out_dir: str, *, max_files: int = 0) -> dict[str, int]:
  """Writes `out_dir/{train,validation}.jsonl`; returns records per split. `max_files` (0 = all) caps the
  files read, in sorted order, for quick runs."""
  root = sysconfig.get_paths()["stdlib"]
  os.makedirs(out_dir, exist_ok=True)
  counts = {"train": 0, "validation": 0}
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
    files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
  files = files[:max_files] if max_files else files
  outs = {s: open(os.path.join(out_dir, f"{s}.jsonl.tmp"), "w", encoding="utf-8") for s in counts}
  for path in files:
    rel = os.path.relpath(path, root)
    split = "validation" if sources._is_validation(rel) else "train"  # pylint: disable=protected-access
    package = rel.split(os.sep)[0].removesuffix(".py")
    with open(path, "rb") as f:
      text = f.read().decode("utf-8", errors="replace")
    for code, summary in _functions(text):
      outs[split].write(json.dumps({"code": code, "summary": summary, "package": package}) + "\n")
      counts[split] += 1
  for s, f in outs.items():
    f.close()
    os.replace(os.path.join(out_dir, f"{s}.jsonl.tmp"), os.path.join(out_dir, f"{s}.jsonl"))
  return counts
