"""sparse_restore: sparse Transformers for image restoration (DRSformer, AST) in JAX/Flax."""

__version__ = "0.1.0"
