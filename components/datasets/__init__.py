"""Data: the built-in task families with their gold reward and simulated labeler, importers of
real preference data, the validation rules of the data gate, and the evaluation sets."""
