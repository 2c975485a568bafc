r"""The notebooks' source, and the script that writes and executes them.

  python notebooks/build.py              # write notebooks/*.ipynb from NOTEBOOKS and run each, outputs stored
  python notebooks/build.py 01 04        # only those whose name starts so

Each notebook is defined here as its cells; `build.py` writes it with nbformat and executes it from a
fresh kernel with nbclient, so the committed outputs (plots included) come from a real run of this code.
`tests/test_notebooks.py` checks that every committed notebook's cells equal these definitions and runs
each again from a fresh kernel: a failing cell fails the suite.
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''import os, tempfile, warnings
warnings.filterwarnings("ignore", message="IProgress not found")  # text progress bars are enough here
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # 8 fake CPU devices.
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import bigjax.notebook as bj
plt.rcParams.update({"figure.dpi": 64, "figure.figsize": (6, 3)})
WORK = tempfile.mkdtemp(prefix="bigjax_nb_")  # Every run of this notebook writes here, nothing in the repo.'''

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {}

NOTEBOOKS["01_quickstart"] = [
    ("md", """# Quickstart: train a small decoder, look at its losses, sample from it

A 2-layer decoder (the quickstart's model, fewer layers and steps) trained on the embedded `stdlib_code`
corpus, its train and eval loss against the unigram floor, and samples. About 30 s on a laptop CPU (the
first time a little longer: the corpus is prepared and tokenized once)."""),
    ("code", SETUP),
    ("code", '''config = bj.config("experiments/quickstart.py", **{
    "model.num_layers": 2, "train.steps": 60, "train.log_every": 5, "train.eval_every": 20,
    "train.checkpoint_every": 60, "data.eval_batches": 2, "train.num_samples": 0})
out = bj.train(config, f"{WORK}/quickstart")   # the progress bar shows the last train and eval loss
print({k: round(v, 4) for k, v in out.items() if k in ("train_loss", "eval_loss", "eval_bits_per_byte")})'''),
    ("code", '''m = bj.metrics(f"{WORK}/quickstart")
train, ev = m[m.split == "train"], m[m.split == "eval"]
fig, ax = plt.subplots()
ax.plot(train.step, train.loss, label="train loss")
ax.plot(ev.step, ev.loss, "o-", label="eval loss")
ax.axhline(ev.unigram_loss.iloc[-1], color="gray", ls="--", label="unigram floor")
ax.set_xlabel("step"); ax.set_ylabel("nats per token"); ax.legend(); plt.show()
ev[["step", "loss", "unigram_loss", "bits_per_byte", "accuracy"]]'''),
    ("code", '''run = bj.load(f"{WORK}/quickstart")
for text in run.generate(["def parse(", "import "], max_new_tokens=24, temperature=0.8, top_k=40, seed=0):
    print(repr(text))'''),
]

NOTEBOOKS["02_models_and_hugging_face"] = [
    ("md", """# The model families, their parameter trees, and Hugging Face parity

BERT, GPT-2, T5 and a Llama-style decoder built at toy sizes; their parameter trees as a table; a
random-weight `transformers` Llama converted to bigjax, the logits compared (a histogram of the
differences), and the round trip back. About 20 s on a laptop CPU."""),
    ("code", SETUP),
    ("code", '''import jax, jax.numpy as jnp, pandas as pd
from bigjax import models, partitioning
from bigjax.config import ModelConfig
families = {
    "BERT": ModelConfig(family="encoder", vocab_size=100, d_model=32, num_layers=2, num_heads=2, d_ff=64,
                        norm_position="post", type_vocab_size=2),
    "GPT-2": ModelConfig(vocab_size=100, d_model=32, num_layers=2, num_heads=2, d_ff=64),
    "T5 v1.1": ModelConfig(family="encoder_decoder", vocab_size=100, d_model=32, num_layers=2, num_heads=2,
                           head_dim=16, d_ff=64, positions="relative", norm="rmsnorm", use_bias=False,
                           gated_mlp=True, tie_embeddings=False),
    "Llama-style": ModelConfig(vocab_size=100, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
                               positions="rotary", norm="rmsnorm", gated_mlp=True, activation="silu",
                               use_bias=False, tie_embeddings=False),
}
rows = []
for name, cfg in families.items():
    ids = jnp.zeros((1, 4), jnp.int32)
    boxed = models.build(cfg).init(jax.random.PRNGKey(0), *((ids, ids) if cfg.family == "encoder_decoder" else (ids,)))["params"]
    for path, leaf in jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: hasattr(x, "names"))[0]:
        key = "/".join(str(getattr(k, "key", k)) for k in path)
        if "block_1" in key or "layers/block_1" in key:
            continue  # one block of each stack is enough to see the shapes
        rows.append({"model": name, "param": key, "shape": tuple(leaf.value.shape), "logical axes": leaf.names})
table = pd.DataFrame(rows)
print(table.groupby("model").size().rename("tensors (one block shown)"))
table[table.model == "Llama-style"]'''),
    ("code", '''import torch, transformers
from bigjax import convert
transformers.utils.logging.disable_progress_bar()
torch.manual_seed(0)
hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
    vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
    num_key_value_heads=2, max_position_embeddings=64)).eval()
hf.save_pretrained(f"{WORK}/hf_llama")
cfg, params = convert.from_hf(f"{WORK}/hf_llama")
ids = np.random.default_rng(0).integers(0, 100, (4, 24))
ours = np.asarray(models.build(cfg).apply({"params": params}, jnp.asarray(ids)))
with torch.no_grad():
    theirs = hf(torch.tensor(ids)).logits.numpy()
diff = (ours - theirs).ravel()
print(f"worst |Δlogit| = {np.abs(diff).max():.2e} over {diff.size:,} logits (logit std {theirs.std():.3f})")
plt.hist(diff, bins=60); plt.xlabel("bigjax − transformers logit"); plt.ylabel("count"); plt.show()'''),
    ("code", '''convert.to_hf(cfg, params, f"{WORK}/hf_back")
again = transformers.AutoModelForCausalLM.from_pretrained(f"{WORK}/hf_back").eval()
with torch.no_grad():
    back = again(torch.tensor(ids)).logits.numpy()
print(type(again).__name__, "round trip: max |Δ| =", float(np.abs(back - theirs).max()))'''),
]

NOTEBOOKS["03_sharding"] = [
    ("md", """# Sharding: a mesh of 8 fake CPU devices, where the tensors go, and what fits

Logical axis names mapped onto a (data, fsdp, tensor) mesh; a parameter and an activation drawn by
`jax.debug.visualize_array_sharding`; per-device memory from `bigjax plan` across meshes and remat policies
as a chart; a paper-size model planned on a TPU slice. About 15 s on a laptop CPU."""),
    ("code", SETUP),
    ("code", '''import jax, jax.numpy as jnp
from bigjax import partitioning, steps, optim
from bigjax.config import ModelConfig
print(jax.device_count(), "devices:", jax.devices()[0].platform)
mesh = partitioning.make_mesh((2, 2, 2), 0)
cfg = ModelConfig(vocab_size=256, d_model=64, num_layers=2, num_heads=4, d_ff=256)
abstract = steps.abstract_state(cfg, mesh, partitioning.RULES)
for name in ("token_embed/embedding", "decoder/block_0/attention/query/kernel", "decoder/block_0/mlp/wi/kernel"):
    node = abstract.shardings.params
    for k in name.split("/"):
        node = node[k]
    print(f"{name:42s} {node.spec}")
params = abstract.init_fn(0)().params
w = params["decoder"]["block_0"]["mlp"]["wi"]["kernel"]
print("MLP input kernel [embed (fsdp), mlp (tensor)]:")
jax.debug.visualize_array_sharding(w)'''),
    ("code", '''x = jax.device_put(jnp.zeros((8, 64)), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
print("a batch of activations [batch over data x fsdp, embed]:")
jax.debug.visualize_array_sharding(x)'''),
    ("code", '''config = bj.config("experiments/quickstart.py", **{"data.batch_size": 32})
rows = []
for mesh_shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]:
    for remat in ("none", "full"):
        config.model.remat_policy = remat
        config.model.scan_layers = remat != "none"
        _, p = bj.plan(config, mesh=mesh_shape, topology="v5e-8")
        rows.append((f"{mesh_shape}\\nremat {remat}", p.params / 2**20, p.optimizer / 2**20,
                     (p.activations + p.peak) / 2**20))
labels = [r[0] for r in rows]
bottom = np.zeros(len(rows))
fig, ax = plt.subplots(figsize=(8, 3))
for i, part in enumerate(("params", "optimizer", "activations + peak")):
    vals = np.array([r[i + 1] for r in rows]); ax.bar(labels, vals, bottom=bottom, label=part); bottom += vals
ax.set_ylabel("MiB per device"); ax.legend(); plt.xticks(fontsize=7); plt.show()'''),
    ("code", '''big = bj.config("experiments/llama_lora.py", "8b")
text, plan = bj.plan(big, mesh=(1, 8, 1), topology="v5e-8")
print(text)'''),
]

NOTEBOOKS["04_decoding"] = [
    ("md", """# Decoding: greedy, sampling and beam search, next-token probabilities, the KV cache's speed

A small decoder trained for a minute, its continuations of one prompt by each decoding method, the
probabilities it gives the next token, and decoding with the KV cache against recomputing the prefix at
every step. About 45 s on a laptop CPU."""),
    ("code", SETUP),
    ("code", '''config = bj.config("experiments/quickstart.py", **{
    "model.num_layers": 2, "train.steps": 80, "train.log_every": 20, "train.eval_every": 80,
    "train.checkpoint_every": 80, "data.eval_batches": 2, "train.num_samples": 0})
bj.train(config, f"{WORK}/decoder")
run = bj.load(f"{WORK}/decoder")
prompt = "def read_file(path):\\n    with open("
settings = {"greedy": {}, "temperature 1.0": dict(temperature=1.0), "top-k 10": dict(temperature=1.0, top_k=10),
            "top-p 0.9": dict(temperature=1.0, top_p=0.9), "beam search (4)": dict(num_beams=4)}
for name, kw in settings.items():
    print(f"{name:16s}", repr(run.generate([prompt], max_new_tokens=16, seed=1, **kw)[0]))'''),
    ("code", '''top = run.next_tokens(prompt, k=12)
fig, ax = plt.subplots()
ax.barh([repr(p) for p, _ in top][::-1], [q for _, q in top][::-1])
ax.set_xlabel("probability of the next token"); plt.show()'''),
    ("code", '''import time, jax, jax.numpy as jnp
from bigjax import decode, models
ids = run.tokenizer.encode([prompt])[0]
cached = lambda: decode.for_model(run.model, run.params, [ids], max_new_tokens=32, eos_id=-1, pad_id=0)
apply = jax.jit(models.build(run.model).apply)
def recompute():
    seq = list(ids)
    for _ in range(32):  # the whole prefix through the model at every step (one compile per length)
        logits = apply({"params": run.params}, jnp.asarray([seq]))
        seq.append(int(jnp.argmax(logits[0, -1])))
    return seq
assert cached()[0] == recompute()  # the same greedy tokens
times = {}
for name, fn in (("KV cache", cached), ("recompute the prefix", recompute)):
    t0 = time.perf_counter(); fn(); times[name] = time.perf_counter() - t0
plt.bar(list(times), [32 / t for t in times.values()]); plt.ylabel("tokens / s (after compiling)"); plt.show()
times'''),
]

NOTEBOOKS["05_pretrain_finetune_evaluate"] = [
    ("md", """# Pre-train → fine-tune → evaluate: a tiny BERT chain, and few-shot with a decoder

A tiny BERT pre-trained with masked LM, fine-tuned to classify a standard-library function's package,
evaluated (confusion matrix, ROC curves) beside the majority and TF-IDF baselines; then a small decoder
classifying in context. On the records of 120 stdlib files (`bigjax.data.tasks`), about 60 s on a laptop CPU."""),
    ("code", SETUP),
    ("code", '''from bigjax.data import tasks
task = f"{WORK}/tasks"
tasks.write_stdlib_functions(task, max_files=120)
tiny = {"model.d_model": 64, "model.num_layers": 2, "model.d_ff": 128, "data.seq_len": 64, "model.max_len": 64,
        "train.log_every": 10, "data.eval_batches": 0, "train.num_samples": 0}
pre = bj.config("experiments/bert_packages.py", "pretrain", **tiny, **{
    "data.source": f"{task}/functions/*.jsonl", "train.steps": 40, "train.eval_every": 40, "train.checkpoint_every": 40})
bj.train(pre, f"{WORK}/bert_pretrain")
fine = bj.config("experiments/bert_packages.py", "finetune", **tiny, **{
    "data.source": f"{task}/packages/*.jsonl", "train.init_from": f"{WORK}/bert_pretrain", "train.steps": 60,
    "train.eval_every": 60, "train.checkpoint_every": 60, "model.dropout_rate": 0.0})
print({k: round(v, 3) for k, v in bj.train(fine, f"{WORK}/bert_finetune").items() if k.startswith("eval_")})'''),
    ("code", '''from bigjax.eval import evaluate, baselines
result = evaluate.evaluate(f"{WORK}/bert_finetune", log=lambda *a: None)
base = baselines.run(fine, f"{WORK}/baselines")
m = result["metrics"]
print(f"fine-tuned BERT: accuracy {m['accuracy']:.3f}, macro-F1 {m['f1']:.3f}, ROC-AUC {m.get('roc_auc', float('nan')):.3f}")
for name, b in base["baselines"].items():
    print(f"{name:22s} accuracy {b['accuracy']:.3f}, macro-F1 {b['f1']:.3f}")'''),
    ("code", '''from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay
warnings.filterwarnings("ignore", message="No artists with labels")
labels = result["labels"]
cm = np.asarray(result["confusion"])
shown = np.argsort(-cm.sum(1))[:8]  # the 8 most frequent packages
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
ConfusionMatrixDisplay(cm[np.ix_(shown, shown)], display_labels=[labels[i] for i in shown]).plot(ax=a, colorbar=False)
a.tick_params(labelsize=7); a.set_title("confusion (8 largest packages)")
probs, y = np.asarray(result["probs"]), np.asarray(result["y_true"])  # returned by evaluate, not written
for i in shown[:4]:
    RocCurveDisplay.from_predictions(y == i, probs[:, i], name=labels[i], ax=b)
b.set_title("one-vs-rest ROC"); plt.tight_layout(); plt.show()'''),
    ("code", '''from bigjax.eval import fewshot
gpt = bj.config("experiments/gpt_code.py", **{"data.source": f"{task}/functions/*.jsonl", "train.steps": 40,
      "train.eval_every": 40, "train.checkpoint_every": 40, "model.num_layers": 2, "data.eval_batches": 2,
      "train.num_samples": 0})
bj.train(gpt, f"{WORK}/gpt")
few = fewshot.evaluate(f"{WORK}/gpt", f"{task}/packages/*.jsonl", text_key="code", label_key="package",
                       ks=(0, 2), max_examples=40, template=tasks.TASKS["stdlib_packages"].fewshot_template)
print(fewshot.summary(few))'''),
]

NOTEBOOKS["06_compression_and_export"] = [
    ("md", """# Compression and export: distillation, int8, pruning on one model; an exported model reloaded

One small decoder trained on `stdlib_code`; a half-width student distilled from it beside the same student
alone; int8 weight-only and dynamic quantization; 50% magnitude pruning; their size against eval loss as a
chart; the int8 model exported to StableHLO and run again without bigjax's model code. About 90 s on a
laptop CPU."""),
    ("code", SETUP),
    ("code", '''small = {"model.num_layers": 2, "train.steps": 60, "train.log_every": 20, "train.eval_every": 60,
         "train.checkpoint_every": 60, "data.eval_batches": 2, "train.num_samples": 0}
base = bj.config("experiments/quickstart.py", **small)
results = {"float32": bj.train(base, f"{WORK}/teacher", progress=False)["eval_loss"]}
half = {"model.d_model": 64, "model.d_ff": 256}
results["student alone"] = bj.train(bj.config("experiments/quickstart.py", **small, **half), f"{WORK}/alone", progress=False)["eval_loss"]
results["student distilled"] = bj.train(bj.config("experiments/quickstart.py", **small, **half, **{
    "train.teacher": f"{WORK}/teacher", "train.distill_alpha": 0.5}), f"{WORK}/distilled", progress=False)["eval_loss"]
results["50% pruned"] = bj.train(bj.config("experiments/quickstart.py", **small, **{
    "train.prune": "magnitude", "train.prune_sparsity": 0.5, "train.prune_end": 40}), f"{WORK}/pruned", progress=False)["eval_loss"]
results'''),
    ("code", '''from bigjax import quantize
from bigjax.eval import evaluate
sizes = {}
for mode in ("int8_weight", "int8_dynamic"):
    info = quantize.quantize_workdir(f"{WORK}/teacher", mode, f"{WORK}/{mode}")
    sizes[mode] = info["total_bytes"]
sizes["float32"] = info["total_float_bytes"]
# The same eval batches as training's eval for every model (bigjax eval with the run's data.eval_batches).
for mode in ("int8_weight", "int8_dynamic"):
    results[mode] = evaluate.evaluate(f"{WORK}/{mode}", max_examples=2 * base.data.batch_size, log=lambda *a: None)["metrics"]["loss"]
results["float32"] = evaluate.evaluate(f"{WORK}/teacher", max_examples=2 * base.data.batch_size, log=lambda *a: None)["metrics"]["loss"]
count = lambda w: sum(np.prod(x.shape) for x in __import__("jax").tree_util.tree_leaves(bj.load(w).params))
sizes["student alone"] = sizes["student distilled"] = 4 * count(f"{WORK}/alone")
sizes["50% pruned"] = sizes["float32"] / 2  # nonzero kernels only (stored dense: the bytes are a sparse format's)
fig, ax = plt.subplots()
for name, loss in results.items():
    ax.scatter(sizes[name] / 2**20, loss); ax.annotate(name, (sizes[name] / 2**20, loss), fontsize=8)
ax.set_xlabel("MiB of params"); ax.set_ylabel("eval loss"); plt.show()
{k: round(v, 4) for k, v in results.items()}'''),
    ("md", """At 60 steps the teacher knows little more than its students, so distillation has little to teach
here; trained as long as the quickstart (520 steps) the distilled half-width student reaches 4.086 against
4.229 alone (README, Compression). int8 costs almost nothing in loss; 50% magnitude pruning, reached
gradually, none at this length."""),
    ("code", '''from bigjax import export
export.export(f"{WORK}/int8_weight", "stablehlo", f"{WORK}/exported")
import jax
exp = jax.export.deserialize(open(f"{WORK}/exported/model.stablehlo", "rb").read())
ids = np.random.default_rng(0).integers(3, 4000, (3, 17)).astype(np.int32)
got = exp.call(dict(np.load(f"{WORK}/exported/params.npz")), ids, np.ones_like(ids))
run = bj.load(f"{WORK}/int8_weight")
from bigjax import models
want = models.build(run.model).apply({"params": run.params}, ids, attention_mask=np.ones_like(ids))
print("exported int8 model, reloaded: max |Δlogit| =", float(np.abs(np.asarray(got) - np.asarray(want)).max()))'''),
]

NOTEBOOKS["07_open_models_lora"] = [
    ("md", """# Open models: a random-weight Llama from transformers, LoRA fine-tuning, merged and converted back

A `LlamaForCausalLM` with random weights, converted; LoRA adapters fine-tuned on a tiny JSONL text-to-text
task (only the adapters train); the workdir read back merged, written with `to_hf`, and transformers'
greedy `generate` compared with bigjax's. About 30 s on a laptop CPU."""),
    ("code", SETUP),
    ("code", '''import json, torch, transformers
transformers.utils.logging.disable_progress_bar()
rng = np.random.default_rng(0)
words = ["alpha", "beta", "gamma", "delta", "omega"]
os.makedirs(f"{WORK}/task", exist_ok=True)
for split, n in (("train", 200), ("validation", 16)):
    with open(f"{WORK}/task/{split}.jsonl", "w") as f:
        for i in range(n):
            a, b = rng.choice(words, 2)
            f.write(json.dumps({"input": f"def f{i}({a}, {b}): return {a} + {b}", "target": f"add {a} and {b}"}) + "\\n")
torch.manual_seed(0)
transformers.LlamaForCausalLM(transformers.LlamaConfig(
    vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256)).save_pretrained(f"{WORK}/hf")
model = {"model.preset": "", "model.vocab_size": 4096, "model.d_model": 64, "model.d_ff": 128, "model.num_layers": 2,
         "model.num_heads": 4, "model.num_kv_heads": 2, "model.max_len": 256, "model.positions": "rotary",
         "model.norm": "rmsnorm", "model.gated_mlp": True, "model.activation": "silu", "model.use_bias": False,
         "model.tie_embeddings": False, "model.layer_norm_eps": 1e-6}
config = bj.config("experiments/llama_lora.py", **model, **{
    "train.init_from": f"{WORK}/hf", "data.source": f"{WORK}/task/*.jsonl", "data.tokenizer": "code_sp4k.model",
    "data.seq_len": 64, "train.steps": 40, "train.eval_every": 10, "train.log_every": 5,
    "optim.learning_rate": 1e-2, "optim.warmup_steps": 5})
bj.train(config, f"{WORK}/lora")
m = bj.metrics(f"{WORK}/lora"); ev = m[m.split == "eval"]
plt.plot(ev.step, ev.loss, "o-"); plt.xlabel("step"); plt.ylabel("eval loss (LoRA rank 16)"); plt.show()'''),
    ("code", '''from bigjax import convert, decode, lora
import flax
raw_kinds = {}
run = bj.load(f"{WORK}/lora")  # merged: W + (alpha / r) A B
print("params after the merge:", sum(x.size for x in __import__("jax").tree_util.tree_leaves(run.params)))
convert.to_hf(run.model, run.params, f"{WORK}/merged")
hf = transformers.AutoModelForCausalLM.from_pretrained(f"{WORK}/merged").eval()
ids = run.tokenizer.encode(["def f3(beta, omega): return beta + omega"])[0] + [run.tokenizer.eos_id]
ours = decode.for_model(run.model, run.params, [ids], max_new_tokens=10, eos_id=-1, pad_id=0)[0]
with torch.no_grad():
    theirs = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=10, eos_token_id=None, pad_token_id=0)[0].tolist()
print("bigjax:      ", run.tokenizer.decode(ours[len(ids):]))
print("transformers:", run.tokenizer.decode(theirs[len(ids):]))
print("the same tokens:", ours == theirs)'''),
]


def notebook(name: str):
  import nbformat  # pylint: disable=g-import-not-at-top
  nb = nbformat.v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
              for kind, src in NOTEBOOKS[name]]
  return nb


def execute(nb, timeout: int = 600):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(HERE)}}).execute()
  return nb


def tidy(nb):
  """Consecutive stream outputs of a cell merged, and progress-bar redraws ("\\r") reduced to their last state,
  as a notebook front end shows them: the stored file stays small and reads as it looked."""
  import nbformat  # pylint: disable=g-import-not-at-top
  for cell in nb.cells:
    if cell.cell_type != "code":
      continue
    merged = []
    for out in cell.outputs:
      if out.output_type == "stream" and merged and merged[-1].output_type == "stream" and merged[-1].name == out.name:
        merged[-1].text += out.text
      else:
        merged.append(out)
    for out in merged:
      if out.output_type == "stream":
        out.text = "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
                             for line in out.text.split("\n"))
    cell.outputs = [o for o in merged if not (o.output_type == "stream" and not o.text.strip())]
  nbformat.validate(nb)
  return nb


def main(prefixes: list[str]) -> None:
  import nbformat  # pylint: disable=g-import-not-at-top
  for name in NOTEBOOKS:
    if prefixes and not any(name.startswith(p) for p in prefixes):
      continue
    t0 = time.time()
    nb = tidy(execute(notebook(name)))
    path = os.path.join(HERE, f"{name}.ipynb")
    nbformat.write(nb, path)
    print(f"{name}: executed in {time.time() - t0:.1f} s, {os.path.getsize(path) / 1024:.0f} KiB")
    if name == "01_quickstart":  # The README's picture: the quickstart notebook's loss plot.
      import base64  # pylint: disable=g-import-not-at-top
      png = next(o["data"]["image/png"] for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
      with open(os.path.join(HERE, "quickstart_loss.png"), "wb") as f:
        f.write(base64.b64decode(png))


if __name__ == "__main__":
  main(sys.argv[1:])
