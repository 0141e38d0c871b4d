"""One module per dvc.yaml stage, in InstructGPT's order: validate, base_model, sft (step 1),
reward (step 2), dpo (the RL-free baseline), ppo / ppo_ptx (step 3), evaluate, promote.

Each has one ``run(cfg) -> dict`` and a ``__main__`` that only calls ``core.stage.stage_main``.
A stage never imports another stage."""
