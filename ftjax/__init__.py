"""ftjax: pretrain and fine-tune encoders in JAX."""

__version__ = "0.1.0"
