"""Labelled tasks made from the standard library's source (the embedded `stdlib_code` corpus's files; no
download), as JSONL record files that `data.source='DIR/*.jsonl'` reads (split by file name).

Embedded record sources (TFDS builders in `sources`, prepared on first use, no files to manage):
`data.source=stdlib_functions` and `data.source=stdlib_packages` (whose `package` is a ClassLabel in the
order of PACKAGES). `write_stdlib_functions(out_dir)` writes the same records as JSONL files. Both parse
every documented function or method of the running Python's standard library (site-packages excluded):


  functions  (stdlib_functions)        every function: `code` (its source with the docstring removed,
                                       dedented), `summary` (the docstring's first line), `package` (the
                                       top-level package or module: `email`, `asyncio`, `json`, ...).
                                       Summarisation (code → summary) reads these; so does pre-training
                                       (`data.text_key=code`): its train split holds no validation function.
  packages   (stdlib_packages)         the functions of the PACKAGES below (the 20 largest by function
                                       count, leaving out `test`, the test suite of every other package):
                                       classification, code → package.

One split for both: a function is `validation` when crc32 of its code % 100 < 10 (`VALIDATION_PERCENT`),
so no validation function's code is in any train split (pre-training included). Functions of one file
can sit on both sides, as in a random split of examples; identical code (a few overloads) lands on
one side only.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
import zlib



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


VALIDATION_PERCENT = 10
# The classification task's labels (Python 3.11's stdlib: 20 largest packages by documented functions,
# `test` left out), fixed here so that the task does not move with a new Python's file layout.
PACKAGES = ("tkinter", "idlelib", "distutils", "asyncio", "email", "importlib", "logging", "_pydecimal",
            "multiprocessing", "lib2to3", "mailbox", "turtle", "unittest", "xml", "http", "tarfile", "urllib",
            "datetime", "pydoc", "ipaddress")


def is_validation(code: str) -> bool:
  return zlib.crc32(code.encode("utf-8")) % 100 < VALIDATION_PERCENT


def iter_functions(max_files: int = 0):
  """(key, split, record) of every documented stdlib function, files in sorted order; `key` is unique
  (file path and position). `max_files` (0 = all) caps the files read, for quick runs."""
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
    files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
  for path in files[:max_files] if max_files else files:
    rel = os.path.relpath(path, root)
    package = rel.split(os.sep)[0].removesuffix(".py")
    with open(path, "rb") as f:
      text = f.read().decode("utf-8", errors="replace")
    for i, (code, summary) in enumerate(_functions(text)):
      yield f"{rel}:{i}", "validation" if is_validation(code) else "train", {
          "code": code, "summary": summary, "package": package}


def write_stdlib_functions(out_dir: str, *, max_files: int = 0) -> dict[str, dict[str, int]]:
  """Writes `out_dir/functions/` and `out_dir/packages/` (see the module docstring); returns the records
  per task and split. The same records as the embedded `stdlib_functions` / `stdlib_packages` sources."""
  counts = {task: {"train": 0, "validation": 0} for task in ("functions", "packages")}
  outs = {}
  for task in counts:
    os.makedirs(os.path.join(out_dir, task), exist_ok=True)
    for split in ("train", "validation"):
      outs[task, split] = open(os.path.join(out_dir, task, f"{split}.jsonl.tmp"), "w", encoding="utf-8")
  for _, split, record in iter_functions(max_files):
    line = json.dumps(record) + "\n"
    for task in counts:
      if task == "functions" or record["package"] in PACKAGES:
        outs[task, split].write(line)
        counts[task][split] += 1
  for (task, split), f in outs.items():
    f.close()
    os.replace(os.path.join(out_dir, task, f"{split}.jsonl.tmp"), os.path.join(out_dir, task, f"{split}.jsonl"))
  return counts
