"""InstructGPT's recipe as an MLOps pipeline, in layers (each imports only the ones below it;
``lint-imports`` checks it, see pyproject.toml):

    apps       the command line, the ranking page, serving                 (components/apps/)
    flows      the Prefect flow that runs the stages through DVC            (flows/)
    stages     one module per dvc.yaml stage: run(cfg) + __main__           (components/stages/)
    datasets   built-in data + simulated labeler, importers, data rules,
               evaluation sets                                              (components/datasets/)
    core       config, errors, model I/O, encoding, scoring, checkpoints,
               tracking, registry, plots, processes, ...                    (components/core/)
    maths      losses, estimators, metric functions: torch + stdlib only    (components/maths/)

A stage never imports another stage. docs/architecture.md describes the design.
"""
