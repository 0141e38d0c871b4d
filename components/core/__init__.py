"""What every stage shares: config, errors and exit codes, model I/O, text encoding, scoring,
checkpoints, MLflow tracking and registry, plots, processes, retention, data-parallel helpers.
Imports maths only; never a stage, a data set or an app."""
