"""The notebooks: each committed notebook's cells are `notebooks/build.py`'s current definitions, it carries
the outputs of a run (plots as images, small enough to review), and it runs top to bottom again here from a
fresh kernel (a failing cell fails the test)."""

import copy
import os
import runpy
import time

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
BUILD = runpy.run_path(os.path.join(REPO, "notebooks", "build.py"))
NAMES = list(BUILD["NOTEBOOKS"])
WITH_PLOTS = ("01_quickstart", "02_models_and_hugging_face", "03_sharding", "04_decoding",
              "05_pretrain_finetune_evaluate", "06_compression_and_export", "07_open_models_lora")


def test_there_are_seven_notebooks_each_committed():
  assert len(NAMES) >= 7
  assert sorted(f[:-6] for f in os.listdir(os.path.join(REPO, "notebooks")) if f.endswith(".ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_current_and_runs_from_a_fresh_kernel(name):
  path = os.path.join(REPO, "notebooks", f"{name}.ipynb")
  committed = nbformat.read(path, as_version=4)
  want = BUILD["notebook"](name)
  assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in want.cells], (
      f"{name}.ipynb is not what notebooks/build.py defines: run `python notebooks/build.py {name[:2]}`")
  code = [c for c in committed.cells if c.cell_type == "code"]
  assert all(c.get("execution_count") for c in code), f"{name}.ipynb was committed without running it"
  assert not any(o.output_type == "error" for c in code for o in c.outputs)
  images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
  assert images >= (1 if name in WITH_PLOTS else 0), name
  assert os.path.getsize(path) < 300 * 1024, f"{name}.ipynb is {os.path.getsize(path) // 1024} KiB"
  t0 = time.time()
  ran = BUILD["execute"](copy.deepcopy(want))  # nbclient raises CellExecutionError on a failing cell.
  assert sum("image/png" in o.get("data", {}) for c in ran.cells if c.cell_type == "code" for o in c.outputs) == images
  print(f"{name}: {time.time() - t0:.1f} s")
