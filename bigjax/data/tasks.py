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

What the generic evaluation adds for each task (`TASKS`, looked up by `data.source` name with `for_source`):
`stdlib_functions` a summarisation baseline, `copy_function_name`; `stdlib_packages` its few-shot prompt
template ("<code>\\n# package: <label>") and fields (code, package). The JSONL files of
`write_stdlib_functions` hold the same tasks, but a path is not recognised as one: any source not named
in `TASKS` gets the generic defaults of `bigjax.eval` (pass `baselines.run(task=...)`, or `--fewshot_keys`
and `--fewshot_template`, to use a task's own).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import sysconfig
import zlib
from typing import Callable, Mapping



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


# ------------------------------------------------------------------ what each task adds to the evaluation

# The words inside an identifier: snake_case parts, then CamelCase humps (acronyms kept whole).
_WORD = re.compile(r"[A-Z]{2,}(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z0-9]+")


def identifier_words(name: str) -> list[str]:
  """`parseHTTPResponse_v2` → ["parse", "HTTP", "Response", "v2"] (also the TF-IDF baseline's features)."""
  return [w for part in name.split("_") for w in _WORD.findall(part)]


def _function_name(code: str) -> str | None:
  """The name of the first function defined in `code` (by position), or None."""
  try:
    tree = ast.parse(code)
  except (SyntaxError, ValueError):
    found = re.search(r"^\s*(?:async\s+)?def\s+([A-Za-z_][A-Za-z0-9_]*)", code, re.MULTILINE)
    return found.group(1) if found else None
  defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  return min(defs, key=lambda n: (n.lineno, n.col_offset)).name if defs else None


def copy_function_name(code: str) -> str:
  """`stdlib_functions`' summarisation baseline: the defined function's name as a sentence.

  `def read_header_line(...)` → "Read header line."; `parseHTTPResponse` → "Parse HTTP response."
  (acronyms keep their capitals); `__init__` → "Init.". The code is parsed with `ast` (decorators,
  `async def` and methods included); code that does not parse falls back to the first `def` line.
  "" when no function is found.
  """
  name = _function_name(code)
  words = identifier_words(name) if name else []
  if not words:
    return ""
  words = [w if len(w) > 1 and w.isupper() else w.lower() for w in words]
  return " ".join([words[0][0].upper() + words[0][1:]] + words[1:]) + "."


@dataclasses.dataclass(frozen=True)
class Task:
  """What one task adds to the generic evaluation, which serves any task without it.

  text_baselines     text_to_text baselines beside the generic one: name → f(input text) → prediction
  fewshot_template   the in-context prompt pattern (`bigjax.eval.fewshot`); None: the generic one
  fewshot_keys       the (text, label) fields to classify in context; None: `--fewshot_keys` must say
  """
  text_baselines: Mapping[str, Callable[[str], str]] = dataclasses.field(default_factory=dict)
  fewshot_template: str | None = None
  fewshot_keys: tuple[str, str] | None = None


TASKS = {
    "stdlib_functions": Task(text_baselines={"copy_function_name": copy_function_name}),
    # A Python comment names the label, as the code a decoder pre-trained on `code` has seen.
    "stdlib_packages": Task(fewshot_template="{text}\n# package: {label}\n\n", fewshot_keys=("code", "package")),
}


def for_source(source: str) -> Task:
  """`TASKS[source]` for a `data.source` named there, else `Task()` (generic defaults only): a path, even
  to the JSONL files of `write_stdlib_functions`, is not recognised (see the module docstring)."""
  return TASKS.get(source, Task())
