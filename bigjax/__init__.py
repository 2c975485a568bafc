"""bigjax: encoder, decoder and encoder-decoder transformers in JAX/Flax, sharded and resumable."""

import os as _os

# TensorFlow is used for tf.data only; keep its C++ start-up chatter (CUDA probing) off the console.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
