"""bigjax.eval.baselines: majority, TF-IDF + logistic regression, copy-the-first-line; and the task table's
own (bigjax.data.tasks): copy-the-function-name for stdlib_functions."""

import numpy as np
import pytest

from bigjax.data import tasks
from bigjax.eval import baselines


def test_majority_most_frequent_and_prior():
  predictions, probs = baselines.majority(["b", "a", "b", "c"], 3)
  assert predictions == ["b", "b", "b"]
  np.testing.assert_allclose(probs, [[1 / 4, 2 / 4, 1 / 4]] * 3)  # Columns a, b, c.
  _, probs = baselines.majority(["b", "a"], 2, labels=["c", "b", "a"])
  np.testing.assert_allclose(probs, [[0, .5, .5]] * 2)


def test_majority_ties_are_deterministic():
  assert baselines.majority(["b", "a", "a", "b"], 1)[0] == ["a"]
  assert baselines.majority(["a", "b", "b", "a"], 1)[0] == ["a"]  # Not the first seen: sorted first.
  assert baselines.majority(["a", "b", "b", "a"], 1, labels=["b", "a"])[0] == ["b"]  # labels order.
  with pytest.raises(ValueError, match="missing \\['c'\\]"):
    baselines.majority(["a", "c"], 1, labels=["a", "b"])


JSON = ["def load_{0}(path):\n    return json.loads(open(path).read())",
        "def dump_{0}(obj):\n    return json.dumps(obj, indent=2)",
        "def parse_{0}_config(text):\n    data = json.loads(text)\n    return data['{0}']"]
NET = ["def open_{0}(host, port):\n    return socket.create_connection((host, port))",
       "def send_{0}(sock, payload):\n    sock.sendall(payload)",
       "def serve_{0}(addr):\n    server = socket.socket()\n    server.bind(addr)"]


def toy(names):
  texts = [t.format(n) for n in names for t in JSON + NET]
  return texts, [lab for _ in names for lab in ["json"] * 3 + ["net"] * 3]


def test_tfidf_logreg_separable_and_deterministic():
  train_texts, train_labels = toy(["user", "item", "order", "cart", "price"])
  eval_texts, eval_labels = toy(["ticket", "seat"])
  labels = ["net", "json", "unseen"]
  predictions, probs = baselines.tfidf_logreg(train_texts, train_labels, eval_texts, labels=labels)
  assert predictions == eval_labels
  assert probs.shape == (len(eval_texts), 3)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0)
  assert np.all(probs[:, 2] == 0.0)  # A label not in training: its column is 0.
  assert np.all(probs[np.array(eval_labels) == "net", 0] > 0.5)  # Columns follow `labels`.
  again, probs_again = baselines.tfidf_logreg(train_texts, train_labels, eval_texts, labels=labels)
  assert again == predictions and np.array_equal(probs_again, probs)


def test_tfidf_logreg_one_training_class_is_majority():
  predictions, probs = baselines.tfidf_logreg(["x = 1", "y = 2"], ["a", "a"], ["z = 3"], labels=["a", "b"])
  assert predictions == ["a"] and probs.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("code, summary", [
    ("def read_header_line(f):\n    return f.readline()", "Read header line."),
    ("async def fetch_all(urls):\n    return await gather(*urls)", "Fetch all."),
    ("@property\n@functools.cache\ndef is_closed(self):\n    return self._closed", "Is closed."),
    ("def __init__(self, x):\n    self.x = x", "Init."),
    ("class Reader:\n    def read_block(self):\n        pass", "Read block."),
    ("def outer():\n    def inner():\n        pass\n    return inner", "Outer."),
    ("def parseHTTPResponse(data):\n    pass", "Parse HTTP response."),
    ("def getIPv4Address():\n    pass", "Get IP v4 address."),
    ("def to_utf8(s):\n    pass", "To utf8."),
    ("def broken_thing(x:\n    return x +", "Broken thing."),          # Does not parse: regex.
    ("    async def  half_done(:\n", "Half done."),
    ("x = compute(1)", ""),                                             # No function at all.
])
def test_copy_function_name(code, summary):
  assert tasks.copy_function_name(code) == summary


def test_copy_first_line():
  assert baselines.copy_first_line("\n  \n  def f(x):  \n    return x\n") == "def f(x):"
  assert baselines.copy_first_line("One line only.") == "One line only."
  assert baselines.copy_first_line(" \n\t\n") == "" and baselines.copy_first_line("") == ""


def test_task_table_keeps_the_stdlib_tasks_own_and_the_rest_generic():
  functions, packages = tasks.for_source("stdlib_functions"), tasks.for_source("stdlib_packages")
  assert functions.text_baselines == {"copy_function_name": tasks.copy_function_name}
  assert packages.fewshot_template == "{text}\n# package: {label}\n\n"
  assert packages.fewshot_keys == ("code", "package") and not packages.text_baselines
  # Anything else, a path to the same records included, gets the generic defaults only.
  for source in ("tfds:imdb_reviews", "/data/functions/*.jsonl", "stdlib_code", ""):
    generic = tasks.for_source(source)
    assert generic == tasks.Task() and not generic.text_baselines
    assert generic.fewshot_template is None and generic.fewshot_keys is None


def test_evaluate_helpers():
  train_texts, train_labels = toy(["user", "item", "order"])
  eval_texts, eval_labels = toy(["seat"])
  train = [{"code": t, "package": lab} for t, lab in zip(train_texts, train_labels)]
  evals = [{"code": t, "package": lab} for t, lab in zip(eval_texts[:5], eval_labels[:5])]  # 3 json, 2 net.
  results = baselines.evaluate_classification_baselines(train, evals, "code", "package")
  assert results["majority"]["accuracy"] == pytest.approx(3 / 5)  # Tie in training: "json" sorts first.
  assert results["majority"]["roc_auc"] == 0.5
  assert results["tfidf_logreg"]["accuracy"] == 1.0 and results["tfidf_logreg"]["roc_auc"] == 1.0
  records = [{"code": "def read_header_line(f):\n    pass", "summary": "Read header line."},
             {"code": "def close(self):\n    pass", "summary": "Close the file."}]
  text = baselines.evaluate_text_baselines(records, "code", "summary")
  assert set(text) == {"copy_first_line"} and text["copy_first_line"]["exact_match"] == 0.0
  text = baselines.evaluate_text_baselines(records, "code", "summary",
                                           {"first": baselines.copy_first_line,
                                            **tasks.for_source("stdlib_functions").text_baselines})
  assert list(text) == ["first", "copy_function_name"]
  assert text["copy_function_name"]["exact_match"] == 50.0 and text["copy_function_name"]["count"] == 2
