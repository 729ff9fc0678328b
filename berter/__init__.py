"""BERTer sweep: hyperparameter sweeps of early-exit multitask BERT fine-tuning.

Layers, lowest first (each imports only from its own layer or lower ones; the order is
written once, in tests/test_layers.py): errors, registry, tasks, config, metrics -> data ->
model -> exits -> strategies -> variants -> train -> checkpoint -> infer -> sweep -> report
-> results -> cli. Importing the package imports none of them.
"""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (tool.setuptools.dynamic)
