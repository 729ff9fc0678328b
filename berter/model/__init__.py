"""The model: MultiExitBert (a wrapped transformers encoder with an exit head per task and layer) and its losses."""
