"""What every converter shares: checked access to a checkpoint's tensors."""

from __future__ import annotations

import numpy as np

from bigjax.config import ConfigError


class Tensors:
  """A checkpoint's tensors by name. `get` checks the shape and records use; `check_all_used` refuses
  a checkpoint with tensors nothing read (a partial load would silently drop them)."""

  def __init__(self, tensors: dict[str, np.ndarray], what: str, ignore: tuple[str, ...] = ()):
    self.tensors = tensors
    self.what = what
    self.ignore = ignore  # Name suffixes of buffers that are not weights (e.g. GPT-2's causal masks).
    self.used: set[str] = set()

  def __contains__(self, name: str) -> bool:
    return name in self.tensors

  def has_prefix(self, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in self.tensors)

  def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.tensors:
      raise ConfigError(f"{self.what} checkpoint is missing tensor {name!r}")
    t = self.tensors[name]
    if tuple(t.shape) != tuple(shape):
      raise ConfigError(f"{self.what} tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    self.used.add(name)
    return np.asarray(t, np.float32)

  def ignore_suffixes(self, *suffixes: str) -> None:
    self.ignore = self.ignore + suffixes

  def check_all_used(self) -> None:
    unused = sorted(k for k in self.tensors if k not in self.used and not k.endswith(self.ignore))
    if unused:
      more = f" (and {len(unused) - 5} more)" if len(unused) > 5 else ""
      raise ConfigError(f"{self.what} checkpoint has tensors bigjax does not use: {', '.join(unused[:5])}{more}")
