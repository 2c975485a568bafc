"""The embedded corpora as TFDS datasets: `pydoc_prose`, `stdlib_code`, `stdlib_functions`, `stdlib_packages`.

Built from files of the running interpreter (no download) and prepared on first use into the TFDS data dir
(`sources` prepares them; what each holds and how it is split is described there). Each has one config,
named by `sources.fingerprint`: what it is made from here. This module imports TensorFlow Datasets, so it is
imported only when a corpus is read or prepared: a run whose token cache exists never loads it.
"""

import zlib

from bigjax.data import import_tensorflow
from bigjax.data import sources

_, tfds = import_tensorflow()


class _Embedded(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """An embedded corpus: its one config is named by `fingerprint`, so that data prepared from other inputs
  (another Python's stdlib, an edited file) sits in a directory of its own and is never read as this one."""

  def get_default_builder_config(self):
    # TFDS's hook for configs that a class attribute cannot list: the fingerprint is known only here.
    return tfds.core.BuilderConfig(name=sources.fingerprint(self.name),
                                   description=f"Made by {sources.PYTHON} from its own standard library.")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in ("train", "validation")}


class PydocProse(_Embedded):
  """CPython's pydoc help topics (English prose), one example per topic."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Topics of the running Python's pydoc_data; crc32(name) % 10 == 0 is validation."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "name": tfds.features.Text()}),
        description="Help topics from CPython's pydoc_data.topics (no download).",
    )

  def _generate_examples(self, split: str):
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top
    for name in sorted(topics.topics):
      if (zlib.crc32(name.encode("utf-8")) % 10 == 0) == (split == "validation"):
        yield name, {"text": topics.topics[name], "name": name}


class StdlibCode(_Embedded):
  """The Python standard library's own `.py` sources, one example per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "All stdlib .py files except site-packages; crc32(path) % 100 < 3 is validation."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
        description="Python source files of the running interpreter's standard library (no download).",
    )

  def _generate_examples(self, split: str):
    for rel, path in sources.stdlib_files():
      if sources.is_code_validation(rel) != (split == "validation"):
        continue
      with open(path, "rb") as fh:
        text = fh.read().decode("utf-8", errors="replace")
      yield rel, {"text": text, "path": rel}


class StdlibFunctions(_Embedded):
  """Every documented function of the standard library: code (docstring removed), summary (the docstring's
  first line), package. Summarisation (code → summary), and pre-training text with data.text_key=code."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "bigjax.data.tasks: crc32(code) % 100 < 10 is validation."}

  def _package_feature(self):
    return tfds.features.Text()

  def _keep(self, record) -> bool:
    del record
    return True

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"code": tfds.features.Text(), "summary": tfds.features.Text(),
                                             "package": self._package_feature()}),
        description=(self.__doc__ or "").strip())

  def _generate_examples(self, split: str):
    from bigjax.data import tasks  # pylint: disable=g-import-not-at-top
    for key, s, record in tasks.iter_functions():
      if s == split and self._keep(record):
        yield key, record


class StdlibPackages(StdlibFunctions):
  """The functions of 20 large standard-library packages (bigjax.data.tasks.PACKAGES): classification of a
  function's code into its package; `package` is a ClassLabel in PACKAGES order."""

  def _package_feature(self):
    from bigjax.data import tasks  # pylint: disable=g-import-not-at-top
    return tfds.features.ClassLabel(names=list(tasks.PACKAGES))

  def _keep(self, record) -> bool:
    from bigjax.data import tasks  # pylint: disable=g-import-not-at-top
    return record["package"] in tasks.PACKAGES


BUILDERS = {"pydoc_prose": PydocProse, "stdlib_code": StdlibCode, "stdlib_functions": StdlibFunctions,
             "stdlib_packages": StdlibPackages}
