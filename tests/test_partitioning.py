"""Meshes, rules and the checks that run before compiling."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from bigjax import config as config_lib
from bigjax import models
from bigjax import partitioning
from bigjax.config import ConfigError


def test_resolve_shape():
  assert partitioning.resolve_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert partitioning.resolve_shape((2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ConfigError, match=r"mesh.shape=\(2, 2, 1\) has 4 devices but 8"):
    partitioning.resolve_shape((2, 2, 1), 8)
  with pytest.raises(ConfigError, match=r"fixed axes \(3 devices\) do not divide the 8"):
    partitioning.resolve_shape((3, -1, 1), 8)


def test_mesh_and_batch_checks():
  mesh = partitioning.make_mesh((2, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  partitioning.check_batch(8, mesh)
  with pytest.raises(ConfigError, match=r"data.batch_size=6 does not divide over the data axes.*= 4"):
    partitioning.check_batch(6, mesh)
  with pytest.raises(ConfigError, match="mesh.num_devices=9: only 8"):
    partitioning.make_mesh((-1, 1, 1), 9)


def _abstract(cfg):
  module = models.build(cfg)
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])


def test_rules_shard_params_over_fsdp_and_tensor():
  cfg = config_lib.ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, d_ff=64, max_len=8)
  mesh = partitioning.make_mesh((2, 2, 2))
  abstract = _abstract(cfg)
  sh = partitioning.logical_shardings(abstract, mesh)
  assert sh["token_embed"]["embedding"].spec == P("tensor", "fsdp")
  assert sh["decoder"]["block_0"]["attention"]["query"]["kernel"].spec == P("fsdp", "tensor", None)
  assert sh["decoder"]["block_0"]["mlp"]["wo"]["kernel"].spec == P("tensor", "fsdp")
  partitioning.check_divisible(abstract, sh)
  # Sharded state really lands in pieces: each device holds 1/(fsdp*tensor) of the embedding.
  with partitioning.activate(mesh):
    module = models.build(cfg)
    init = jax.jit(lambda: nn.meta.unbox(module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]),
                   out_shardings=sh)
    params = init()
  shard = params["token_embed"]["embedding"].addressable_shards[0].data
  assert shard.shape == (32, 16)


def test_indivisible_dimension_is_named_before_compiling():
  cfg = config_lib.ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=3, head_dim=8, d_ff=64, max_len=8)
  mesh = partitioning.make_mesh((1, 1, 8))
  abstract = _abstract(cfg)
  with pytest.raises(ConfigError, match=r"param decoder/block_0/attention/\w+/\w+ has a dimension of 3 .*\('tensor',\) \(size 8\)"):
    partitioning.check_divisible(abstract, partitioning.logical_shardings(abstract, mesh))


def test_config_rules_override_the_defaults_and_bad_rules_are_named():
  rules = partitioning.rules_for((("embed", None), ("mlp", ("fsdp", "tensor"))))
  as_dict = dict(rules)
  assert as_dict["embed"] is None and as_dict["mlp"] == ("fsdp", "tensor") and as_dict["vocab"] == "tensor"
  cfg = config_lib.ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, d_ff=64, max_len=8)
  abstract = _abstract(cfg)
  sh = partitioning.logical_shardings(abstract, partitioning.make_mesh((2, 2, 2)), rules)
  assert sh["token_embed"]["embedding"].spec == P("tensor", None)  # embed no longer on fsdp.
  with pytest.raises(ConfigError, match=r"mesh.rules: 'embedding' is not a logical axis the models use; known: vocab"):
    partitioning.rules_for((("embedding", "fsdp"),))
  with pytest.raises(ConfigError, match=r"mesh.rules: 'embed' maps to 'model', not a mesh axis; allowed: data, fsdp"):
    partitioning.rules_for((("embed", "model"),))
  # A logical name no rule maps would be replicated silently by flax: it is an error instead.
  without_mlp = tuple((n, a) for n, a in partitioning.RULES if n != "mlp")
  with pytest.raises(ConfigError, match=r"param decoder/block_0/mlp/wi/\w+ has the logical axis 'mlp', which no "
                                        r"rule maps"):
    partitioning.check_rules(abstract, without_mlp)
  partitioning.check_rules(abstract, partitioning.RULES)


def test_a_mesh_that_cannot_follow_the_topology_says_so(monkeypatch, capsys):
  """mesh_utils.create_device_mesh refuses shapes it cannot lay onto the interconnect (a TPU slice used in
  part, a split physical axis): the mesh is then in jax.devices() order, and a start-up line says why."""
  def refuse(shape, devices=None, **kwargs):
    raise NotImplementedError("Failed to find assignment for logical_axis_index 1 of size 2 with remaining\n"
                              "assignable mesh [2, 2, 1]")
  monkeypatch.setattr(partitioning.mesh_utils, "create_device_mesh", refuse)
  mesh = partitioning.make_mesh((2, 2, 2))
  assert list(mesh.devices.flat) == jax.devices()[:8]  # Still a valid mesh of all the devices, in order.
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("bigjax: mesh (2, 2, 2) over 8 cpu device(s) is in jax.devices() "
                                                 "order, not laid out for the interconnect"), lines
  assert "NotImplementedError: Failed to find assignment for logical_axis_index 1" in lines[0]
  monkeypatch.undo()
  partitioning.make_mesh((2, 2, 2))
  assert capsys.readouterr().out == ""  # A topology-aware mesh says nothing.
