"""What a user runs: the ``rlhf`` command line, the ranking page, model serving."""
