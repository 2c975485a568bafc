"""experiments/papers/: each paper config loads as `bigjax train --config` loads it, validates, carries the
paper's numbers (typed here from the papers, not read from the files), and fits the TPU slice its
docstring names, by running the docstring's own `bigjax plan` commands (estimate only, no compile)."""

import glob
import json
import math
import os
import re
import shlex

from absl import flags
from ml_collections import config_flags
import pytest

from bigjax import config as config_lib
from bigjax import optim
from bigjax import plan

from conftest import REPO

PAPERS = os.path.join(REPO, "experiments", "papers")
FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(PAPERS, "*.py")))


def load(spec: str, overrides=()):
  """`spec` ("experiments/papers/x.py[:arg]") loaded by the flag `bigjax train --config` and `bigjax plan`
  use (ml_collections' config_flags, lock_config=True), with `--config.a.b=value` overrides."""
  argv = ["bigjax", f"--config={os.path.join(REPO, spec)}", *overrides]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return holder.value


def docstring(name: str) -> str:
  with open(os.path.join(PAPERS, name)) as f:
    text = f.read()
  return text[:text.index('"""', 4)]


# The papers' numbers: (file, arg) -> expected. Steps and lr are what the file must set for the paper's
# schedule as bigjax expresses it (see each file's docstring for the mapping).
EXPECTED = {
    # Devlin et al. 2018, A.2: 256 x 128 for 90% of 1M steps, then 256 x 512; Adam 1e-4, 10k warmup.
    ("bert_base.py", None): dict(family="encoder", batch=256, seq_len=128, lr=1e-4, layers=12, d_model=768, heads=12,
                                 d_ff=3072, vocab=30522, steps=900_000, warmup=10_000, end_lr=1e-5, dropout=0.1,
                                 params=109_514_298),
    ("bert_base.py", "phase2"): dict(family="encoder", batch=256, seq_len=512, lr=1e-5, layers=12, d_model=768,
                                     heads=12, d_ff=3072, vocab=30522, steps=100_000, warmup=0, end_lr=0.0,
                                     dropout=0.1, params=109_514_298),
    # Radford et al. 2019: 12 x 768, 1024 context, 50,257 vocab, batch 512; lr 6e-4 (GPT-3 Table 2.1, 125M).
    ("gpt2_small.py", None): dict(family="decoder", batch=512, seq_len=1024, lr=6e-4, layers=12, d_model=768,
                                  heads=12, d_ff=3072, vocab=50257, steps=600_000, warmup=2_000, end_lr=6e-5,
                                  dropout=0.0, params=124_439_808),
    # Raffel et al. 2019: baseline 2^19 steps x 128 x 512; released 1M steps x 2048. Adafactor 0.01 ->
    # AdamW 0.01 / sqrt(768); rsqrt ends at sqrt(1e4 / steps) of its peak.
    ("t5_base.py", None): dict(family="encoder_decoder", batch=128, seq_len=512, lr=0.01, layers=12,
                               d_model=768, heads=12, d_ff=3072, vocab=32128, steps=2**19, warmup=10_000,
                               end_lr=0.01 * math.sqrt(1e4 / 2**19), dropout=0.1,
                               params=222_903_552),
    ("t5_base.py", "released"): dict(family="encoder_decoder", batch=2048, seq_len=512, lr=0.01,
                                     layers=12, d_model=768, heads=12, d_ff=3072, vocab=32128, steps=1_000_000,
                                     warmup=10_000, end_lr=0.01 * 0.1, dropout=0.1,
                                     params=222_903_552),
    ("t5_v1_1_base.py", None): dict(family="encoder_decoder", batch=128, seq_len=512, lr=0.01,
                                    layers=12, d_model=768, heads=12, d_ff=2048, vocab=32128, steps=2**19,
                                    warmup=10_000, end_lr=0.01 * math.sqrt(1e4 / 2**19),
                                    dropout=0.0, params=247_577_856),
    ("t5_v1_1_base.py", "released"): dict(family="encoder_decoder", batch=2048, seq_len=512,
                                          lr=0.01, layers=12, d_model=768, heads=12, d_ff=2048,
                                          vocab=32128, steps=1_000_000, warmup=10_000,
                                          end_lr=0.01 * 0.1, dropout=0.0, params=247_577_856),
}


def test_every_paper_file_has_expected_numbers():
  assert FILES, "experiments/papers/ holds no config"
  assert sorted({name for name, _ in EXPECTED}) == FILES


@pytest.mark.parametrize("name,arg", sorted(EXPECTED, key=str))
def test_config_loads_validates_and_has_the_papers_numbers(name, arg):
  spec = f"experiments/papers/{name}" + (f":{arg}" if arg else "")
  config = load(spec)
  mcfg = config_lib.validate(config)
  want = EXPECTED[(name, arg)]
  got = dict(family=mcfg.family, batch=config.data.batch_size, seq_len=config.data.seq_len,
             lr=config.optim.learning_rate, layers=mcfg.num_layers, d_model=mcfg.d_model, heads=mcfg.num_heads,
             d_ff=mcfg.d_ff, vocab=mcfg.vocab_size, steps=config.train.steps, warmup=config.optim.warmup_steps,
             end_lr=config.optim.learning_rate * config.optim.end_lr_ratio, dropout=mcfg.dropout_rate)
  assert got.pop("family") == want["family"], spec
  for key, value in got.items():
    assert value == pytest.approx(want[key], rel=1e-6, abs=1e-12), (spec, key, value, want[key])
  if mcfg.family == "encoder_decoder":
    assert mcfg.decoder_layers == 12 and mcfg.kv_dim == 64
    # T5 trained with Adafactor (no momentum, decay 0.8, update clipping 1.0, parameter scaling), no weight
    # decay and no global-norm clipping; 1/sqrt(max(step, 1e4)) is 0.01 on rsqrt with 1e4 warmup steps.
    o = config.optim
    assert (o.name, o.weight_decay, o.clip_norm, o.schedule) == ("adafactor", 0.0, 0.0, "rsqrt"), spec
    assert (o.adafactor_decay_rate, o.adafactor_clipping, o.adafactor_parameter_scale) == (0.8, 1.0, True), spec
    assert float(optim.schedule(config)(40_000)) == pytest.approx(40_000 ** -0.5, rel=1e-5)
  # The schedule bigjax builds from the config reaches the paper's values where the docstring says.
  schedule = optim.schedule(config)
  assert float(schedule(config.optim.warmup_steps)) == pytest.approx(want["lr"], rel=1e-5)
  assert float(schedule(config.train.steps)) == pytest.approx(want["end_lr"], rel=1e-5, abs=1e-12)
  assert config.data.source.startswith("tfds:")


def test_bert_phases_join_where_the_papers_linear_schedule_is_at_step_900k():
  phase1, phase2 = load("experiments/papers/bert_base.py"), load("experiments/papers/bert_base.py:phase2")
  paper_lr_at_900k = 1e-4 * (1 - 900_000 / 1_000_000)
  assert float(optim.schedule(phase1)(phase1.train.steps)) == pytest.approx(paper_lr_at_900k, rel=1e-5)
  assert float(optim.schedule(phase2)(0)) == pytest.approx(paper_lr_at_900k, rel=1e-5)
  assert phase1.train.steps + phase2.train.steps == 1_000_000
  assert phase2.train.init_from == "workdirs/bert_base"  # The phase-1 workdir of the docstring's command.
  assert "--workdir workdirs/bert_base\n" in docstring("bert_base.py")


def test_unknown_arg_is_refused():
  with pytest.raises(Exception, match="unknown arg"):
    load("experiments/papers/bert_base.py:phase3")


_PLAN = re.compile(r"^\s*bigjax plan (.+)$", re.MULTILINE)
_PARAMS = re.compile(r"bigjax plan: \w+, ([\d,]+) params; mesh \(data (\d+), fsdp (\d+), tensor (\d+)\).*\((\S+): ")


def plan_commands():
  """(file, spec, overrides, topology, mesh) of every `bigjax plan` command in the papers' docstrings."""
  out = []
  for name in FILES:
    for line in _PLAN.findall(docstring(name)):
      args = shlex.split(line)
      opts = dict(a.split("=", 1) if "=" in a else (a, None) for a in args if a.startswith("--") and
                  not a.startswith("--config."))
      values = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "--topology", "--mesh")}
      opts.update(values)
      overrides = [a for a in args if a.startswith("--config.")]
      out.append((name, opts["--config"], tuple(overrides), opts["--topology"], opts["--mesh"]))
  return out


def test_every_config_variant_has_a_plan_command_in_its_docstring():
  specs = {spec for _, spec, _, _, _ in plan_commands()}
  for name, arg in EXPECTED:
    assert f"experiments/papers/{name}" + (f":{arg}" if arg else "") in specs, (name, arg)


@pytest.mark.parametrize("name,spec,overrides,topology,mesh", plan_commands())
def test_docstring_plan_fits_its_slice(name, spec, overrides, topology, mesh, capsys):
  config = load(spec, overrides)
  p = plan.main(config, mesh=mesh, topology=topology, compile_here=False)
  out = capsys.readouterr().out
  figures = json.loads(out.strip().splitlines()[-1])
  assert p.fits and figures["fits"] and figures["xla"] is None, out  # Estimated, not compiled.
  assert f"({topology}: " in out and "fits:" in out
  # The summary pasted into the docstring names this slice, this mesh and this param count.
  arg = spec.partition(":")[2] or None
  pasted = [m for m in _PARAMS.finditer(docstring(name)) if m.group(5) == topology
            and tuple(map(int, m.group(2, 3, 4))) == p.mesh]
  assert pasted, f"{name}: no pasted plan summary for {topology} mesh {p.mesh}"
  assert {int(m.group(1).replace(",", "")) for m in pasted} == {p.param_count}
  assert p.param_count == EXPECTED[(name, arg)]["params"]


@pytest.mark.parametrize("name,spec,overrides,topology,mesh", plan_commands())
def test_plan_shapes_do_not_depend_on_the_tokenizer(name, spec, overrides, topology, mesh):
  """The docstrings plan with the paper's own tokenizer, which is trained later or lives on gs:// (not
  here): the planner reads none, and builds the batch a byte or a real SentencePiece tokenizer would."""
  assert not any(o.startswith("--config.data.tokenizer=") for o in overrides)
  shapes = {}
  for tok in ("", "byte", "code_sp4k.model"):
    config = load(spec, list(overrides) + ([f"--config.data.tokenizer={tok}"] if tok else []))
    batch = plan.abstract_batch(config, config_lib.validate(config))
    shapes[tok] = {k: (v.shape, str(v.dtype)) for k, v in batch.items()}
  assert shapes[""] == shapes["byte"] == shapes["code_sp4k.model"]
