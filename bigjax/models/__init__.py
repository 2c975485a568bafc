"""Model families. `build(cfg)` returns the linen module for a `ModelConfig`."""

from bigjax.config import ConfigError, ModelConfig
from bigjax.models.decoder import Decoder


def build(cfg: ModelConfig):
  if cfg.family == "decoder":
    return Decoder(cfg)
  raise ConfigError(f"model.family={cfg.family!r}: supported families are 'decoder'")
