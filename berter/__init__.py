"""BERTer sweep: hyperparameter sweeps of early-exit multitask BERT fine-tuning.

Modules, in the order data flows: config -> variants / search -> data -> model, losses,
smart, strategies, exits -> train -> trainable -> sweep -> results -> report; infer runs a
trained checkpoint with early exit. Importing the package imports none of them.
"""

__version__ = "0.1.0"
