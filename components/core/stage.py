"""The stage contract: how ``python -m components.stages.<stage>`` (what dvc.yaml runs) calls a stage.

A stage is one module with one ``run(cfg) -> dict`` function. Its ``__main__`` only calls
``stage_main(stage, run)``, which

1. reads params.yaml (+ profile, + ``-S`` overrides) and hands ``run`` a view of it that holds
   only what the stage's dvc.yaml entry lists under ``params`` (plus the path keys of ``common``):
   reading anything else is an error, so DVC reruns a stage whenever something it reads changes;
2. opens the stage's MLflow run (nested under the flow's, params and lineage tags logged);
3. logs ``run``'s numeric results as metrics and writes them to ``metrics/<stage>.json`` for DVC;
4. turns bad input into one ``error: [stage] ...`` line and exit 2 (params) or 3 (data, model
   files, non-finite values); a bug keeps its traceback (exit 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from components.core import distributed, tracking
from components.core.config import SECTIONS, Config, load_config
from components.core.env import reexec_with_malloc_env
from components.core.errors import INPUT_ERRORS, ConfigError, exit_code
from components.core.pipeline import stage_params

# Keys of `common` any stage may read without declaring them: where things are, not what is computed.
PATH_KEYS = frozenset({"profile", "data_dir", "outputs_dir", "metrics_dir", "plots_dir", "experiment",
                       "tracking_uri", "keep_versions"})


class _Section:
    """A params section of which only ``keys`` may be read (None: all of them)."""

    def __init__(self, section, name: str, keys: frozenset[str] | None, stage: str):
        self._section, self._name, self._keys, self._stage = section, name, keys, stage

    def __getattr__(self, key: str) -> Any:
        if self._keys is not None and key in type(self._section).model_fields and key not in self._keys:
            raise ConfigError(f"stage '{self._stage}' reads {self._name}.{key}, which its params in dvc.yaml do not "
                              f"list: add it there, so that DVC reruns the stage when it changes")
        return getattr(self._section, key)

    def model_dump(self, **kw) -> dict:
        dump = self._section.model_dump(**kw)
        return dump if self._keys is None else {k: v for k, v in dump.items() if k in self._keys}


class StageConfig:
    """The view of a ``Config`` a stage gets: the sections and keys its dvc.yaml ``params`` list."""

    def __init__(self, cfg: Config, stage: str, declared: list[str]):
        self._cfg, self._stage = cfg, stage
        self._keys: dict[str, frozenset[str] | None] = {"common": PATH_KEYS}  # section -> keys (None: all)
        for p in declared:
            section, _, key = p.partition(".")
            if not key:
                self._keys[section] = None
            elif self._keys.get(section, frozenset()) is not None:
                self._keys[section] = self._keys.get(section, frozenset()) | {key}

    def section(self, name: str):
        if name in SECTIONS and name not in self._keys:
            raise ConfigError(f"stage '{self._stage}' reads params section '{name}', which its params in dvc.yaml do "
                              f"not list: add it there, so that DVC reruns the stage when it changes")
        return _Section(self._cfg.section(name), name, self._keys.get(name), self._stage)

    def __getattr__(self, name: str) -> Any:
        section = "validate" if name == "validate_" else name
        if section in SECTIONS:
            return self.section(section)
        return getattr(self._cfg, name)


def stage_config(cfg: Config, stage: str) -> StageConfig:
    return StageConfig(cfg, stage, stage_params(stage))


def stage_main(stage: str, run_fn: Callable[[Any], dict], argv: list[str] | None = None) -> int:
    """The entry point DVC calls (see the module docstring); returns the exit code."""
    if argv is None:
        distributed.relaunch_under_accelerate(stage)  # only with $RLHF_ACCELERATE_CONFIG set
        reexec_with_malloc_env()
    if distributed.world_size() > 1 and stage not in distributed.STAGES:
        raise SystemExit(f"error: [{stage}] trains in one process: run it with python -m, not accelerate launch "
                         f"(data-parallel stages: {', '.join(distributed.STAGES)})")
    try:
        full = load_config(overrides=argv if argv is not None else sys.argv[1:])
        cfg = stage_config(full, stage)
        if not distributed.is_main():  # another rank of a launch: trains its share; rank 0 logs and writes
            run_fn(cfg)
            distributed.wait_for_main()
            return 0
        with tracking.stage_run(full, stage):  # an exception ends the MLflow run FAILED, then comes here
            result = run_fn(cfg)
            tracking.log_metrics(stage, result)
    except INPUT_ERRORS as e:
        # Bad input (params, data, model files) or a non-finite loss: one clear line, no traceback,
        # non-zero exit; nothing was registered and no metrics file is written.
        msg = str(e)
        print(f"error: {msg if msg.startswith(f'[{stage}]') else f'[{stage}] {msg}'}", file=sys.stderr, flush=True)
        return exit_code(e)
    tracking.write_metrics(full.metrics_file(stage),
                           {k: v for k, v in result.items() if isinstance(v, (int, float, bool, str))})
    distributed.wait_for_main()  # the other ranks of a launch exit once the outputs are complete
    return 0
