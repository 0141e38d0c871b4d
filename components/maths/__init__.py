"""Pure maths: losses, advantage and KL estimators, collapse diagnostics, statistics and metric
functions. Torch and the standard library only; no other module of the project."""
