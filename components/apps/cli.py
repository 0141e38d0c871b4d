"""``rlhf``: the command line. Each command is a thin wrapper over a component or the flow.

    rlhf run [--profile P] [-S section.key=value ...]   the whole pipeline (Prefect flow over DVC stages)
    rlhf data synth [--out DIR] [--force]                 the built-in simulated-labeler data set
    rlhf data import {hh-rlhf,oasst} SRC [--out DIR]       real preference data -> project format
    rlhf validate [--data DIR]                            the great-expectations gate alone
    rlhf params [-S ...] [--defaults]                     the resolved configuration (--defaults: params.yaml)
    rlhf evaluate --model models:/policy@champion         one model vs SFT (registry URI or folder)
    rlhf ui [--port 5000]                                 the MLflow UI on 127.0.0.1
    rlhf serve [--model models:/policy@champion]          a registered model over HTTP (chat) on 127.0.0.1
    rlhf schedule --cron "0 3 * * *" [--name NAME]        the pipeline on a cron schedule (Prefect server)
    rlhf sample --model REF --prompts FILE [--k 4]        K answers per prompt -> the labeling queue
    rlhf label [--labeler NAME] [--port 8765]             the ranking page on 127.0.0.1 (human feedback)
    rlhf label --simulated | --report | --commit          simulated labeler, agreement, gate + dvc add
    rlhf label --compare MODEL_A MODEL_B [--simulated]    blind A/B judgements of two models (win rate: --report)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from components.core.config import ROOT, load_config, render_params, resolve, set_params, shadowed_by_profile
from components.core.env import set_offline_env
from components.core.errors import EXIT_BAD_INPUT, EXIT_BAD_PARAMS, INPUT_ERRORS, DataError, ServiceError, exit_code
from components.core.pipeline import dvc
from components.core.registry import resolve_model
from components.core.tracking import stage_run, write_metrics

# Stages, the data sets and the flow import torch, transformers, great-expectations or Prefect:
# the commands import them when they run, so that `rlhf params` or `rlhf --help` start at once.


def _overrides(args) -> list[str]:
    o = list(args.set or [])
    if getattr(args, "profile", None):
        o.append(f"common.profile={args.profile}")
    return o


def cmd_params(args) -> int:
    if args.defaults:
        print(render_params(), end="")
        return 0
    cfg = load_config(overrides=_overrides(args))
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def cmd_data_synth(args) -> int:
    from components.datasets import synth

    cfg = load_config(overrides=_overrides(args))
    out = Path(args.out) if args.out else cfg.data_dir
    counts = synth.write_builtin(cfg, out, force=args.force)
    print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if out.resolve() == (ROOT / "data").resolve() and (ROOT / ".dvc").exists():
        dvc("add", "data")
        print("tracked by data.dvc (commit data.dvc to version this data set)")
    return 0


def cmd_data_import(args) -> int:
    """Every file the pipeline needs from one real source: comparisons, demonstrations, RL prompts and the
    pretraining mix (real text of the same records, none of it a demonstration's answer)."""
    from components.core.data import FILES, write_jsonl
    from components.datasets import importers

    out = Path(args.out)
    if args.kind == "hh-rlhf":
        comparisons, stats = importers.import_hh_rlhf(args.src, limit=args.limit)
        # hh-rlhf has no demonstrations: the chosen answer is one (the usual SFT set for hh-rlhf); every
        # pair's prompt is an RL prompt; the pretraining mix is the rejected dialogues (real text, not trained on)
        demos = [{"id": f"{c['id']}-chosen", "prompt": c["prompt"], "response": c["responses"][0]} for c in comparisons]
        prompts = [{"id": c["id"], "prompt": c["prompt"]} for c in comparisons]
        texts = [(c["id"], f"{c['prompt']}\n\nAssistant: {c['responses'][1]}") for c in comparisons]
    else:
        comparisons, demos, prompts, stats = importers.import_oasst_all(args.src, limit=args.limit)
        # the pretraining mix: every ranked reply that is not its group's demonstration
        best = {d["response"] for d in demos}
        texts = [(f"{c['id']}-{k}", r) for c in comparisons for k, r in enumerate(c["responses"]) if r not in best]
    targets = {FILES["comparisons"]: comparisons, FILES["demonstrations"]: demos, FILES["prompts"]: prompts,
               FILES["pretrain"]: [{"id": i, "text": t} for i, t in texts]}
    for name, recs in targets.items():
        if recs and (out / name).exists() and not args.force:
            raise DataError(f"{out / name}: exists (use --force to overwrite)")
    for name, recs in targets.items():
        if recs:
            write_jsonl(out / name, recs)
            print(f"wrote {out / name}: {len(recs)} records")
        else:
            print(f"warning: {args.src}: nothing for {name} (not written)")
    print("stats: " + json.dumps(stats))
    return 0


def cmd_validate(args) -> int:
    from components.datasets.rules import report_dirs
    from components.stages import validate

    cfg = load_config(overrides=_overrides(args))
    data_dir, report_dir = report_dirs(cfg, args.data, args.report_dir)  # another folder: not outputs/validate
    validate.run(cfg, data_dir=data_dir, report_dir=report_dir)
    return 0


def cmd_run(args) -> int:
    from flows import stage_runner

    stage_runner.warm_up()  # the stages' libraries import in the background while Prefect starts
    from flows.cache import StageFailed
    from flows.lock import project_lock
    from flows.rlhf import rlhf_pipeline
    from flows.server import start_temporary_server
    from flows.summary import failure_report, quiet_stage_tracebacks

    if not args.debug:
        quiet_stage_tracebacks()  # a failed stage: its own lines here, Prefect's traceback in the Prefect log only
    overrides = _overrides(args)
    try:
        with project_lock(load_config().flow.wait_for_lock):  # params.yaml is edited only by the run holding the lock
            if overrides:
                shadowed_by_profile(overrides)
                changed = set_params(ROOT / "params.yaml", overrides)
                if changed:
                    print(f"params.yaml updated (as `dvc exp run -S` would): {', '.join(changed)}")
            start_temporary_server()  # when PREFECT_API_URL is unset: Prefect's server, on a port of its own
            rlhf_pipeline()
    except StageFailed as e:
        if args.debug:
            raise
        print(failure_report(e), file=sys.stderr)
        return e.exit_code if e.exit_code in (EXIT_BAD_PARAMS, EXIT_BAD_INPUT) else 1  # 2, 3: as the stage said
    except ServiceError as e:  # the temporary Prefect server did not start
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args) -> int:
    """Evaluate one model (registry URI or folder) against the reference, in its own MLflow run."""
    from components.stages import evaluate

    cfg = load_config(overrides=_overrides(args))
    path = resolve_model(args.model, cfg)
    ref = resolve_model(args.reference or cfg.out_dir(cfg.evaluate.reference), cfg)
    name = args.model.removeprefix("models:/") if args.model.startswith("models:/") else Path(args.model).name
    with stage_run(cfg, "evaluate"):
        results = evaluate.evaluate_models(cfg, {name: path}, ref, parent_tags={"model_uri": str(args.model)})
    if args.out:
        write_metrics(Path(args.out), results[name])
    print(json.dumps(results[name], indent=2))
    return 0


def cmd_sample(args) -> int:
    """K sampled answers per prompt from a model (registry URI or folder) -> the labeling queue."""
    from components.apps import label

    cfg = load_config(overrides=_overrides(args))
    summary = label.sample(cfg, args.model, args.prompts, k=args.k, out_queue=args.out)
    print(f"wrote {summary['queue']}: {summary['items']} items, {summary['answers']} answers from "
          f"{summary['model_version']}" + (f"; {summary['fewer_than_k']} with fewer than K distinct answers"
                                           if summary["fewer_than_k"] else "")
          + (f"; {summary['dropped']} prompts dropped (< 2 distinct answers)" if summary["dropped"] else ""))
    print(f"next: rlhf label --queue {summary['queue']}")
    return 0


def serve_page(cfg, args, make_app, queue: Path, out: Path, page: str, what: str) -> int:
    """Serve a labeling page (``make_app``: label's or ab's) on ``--host``/``--port`` until Ctrl-C."""
    from components.apps import label
    from components.datasets.rules import control_tokens_for

    try:
        app = make_app(queue, out, seed=cfg.common.seed, labeler=args.labeler,
                       control_tokens=control_tokens_for(cfg, "label"))
    except label.SubmissionError as e:
        raise DataError(f"--{e}") from None
    print(f"{page}: http://{args.host}:{args.port}/?labeler={args.labeler}  (queue {queue}, {what} -> {out}; "
          "Ctrl-C to stop)", flush=True)
    label.serve(app, args.host, args.port)
    return 0


def compare(cfg, args) -> int:
    """``rlhf label --compare A B``: the pair queue (sampled unless it compares these versions already),
    then the A/B page, or the simulated labeler with --simulated."""
    from components.apps import ab

    if args.report or args.commit:
        raise DataError("--compare: use --report or --commit without --compare (they cover every pair)")
    queue = resolve(args.queue or cfg.label.ab_queue)
    judged = ab.judgements_path(cfg)
    prompts = args.prompts or cfg.data_dir / "prompts.jsonl"
    versions = tuple(ab.model_version_of(m, resolve_model(m, cfg)) for m in args.compare)
    if ab.queue_versions(queue) == versions and not args.prompts:
        print(f"A/B queue {queue}: reused (it compares {versions[0]} and {versions[1]})")
    else:
        s = ab.sample_pair(cfg, *args.compare, prompts, out_queue=queue)
        print(f"wrote {s['queue']}: {s['items']} items comparing {s['model_versions'][0]} (A) and "
              f"{s['model_versions'][1]} (B)" + (f"; {s['identical']} prompts left out: both answers the same"
                                                 if s["identical"] else "")
              + (f"; {s['no_answer']} without an answer" if s["no_answer"] else ""))
    if args.simulated:
        s = ab.simulate(cfg, queue, judged, labelers=args.labelers)
        print(f"simulated labeler: {s['written']} judgements of {s['items']} items appended to {judged}")
        print(ab.report(queue, judged, seed=cfg.common.seed))
        return 0
    return serve_page(cfg, args, ab.make_app, queue, judged, "A/B page", "judgements")


def cmd_label(args) -> int:
    """The ranking page, or --simulated / --report / --commit."""
    from components.apps import label

    cfg = load_config(overrides=_overrides(args))
    if args.compare:
        return compare(cfg, args)
    queue = resolve(args.queue or cfg.label.queue)
    out = resolve(args.out) if args.out else label.comparisons_path(cfg)
    if args.commit:
        print(label.commit(cfg, out.parent))
        return 0
    if args.report:
        print(label.report(queue, out))
        from components.apps import ab

        ab_queue, judged = resolve(cfg.label.ab_queue), ab.judgements_path(cfg)
        if ab_queue.exists() or judged.exists():
            from components.datasets.rules import check_judgements

            check_judgements(cfg.data_dir, cfg.out_dir("label") / "judgements_report", control_tokens=())  # names a bad line
            print(ab.report(ab_queue, judged, seed=cfg.common.seed))
        return 0
    if args.simulated:
        s = label.simulate(cfg, queue, out, labelers=args.labelers)
        print(f"simulated labeler: {s['written']} rankings of {s['items']} items appended to {out}")
        print(label.report(queue, out))
        return 0
    return serve_page(cfg, args, label.make_app, queue, out, "ranking page", "rankings")


def cmd_ui(args) -> int:
    """The MLflow UI over the project's store, on 127.0.0.1 unless --host says otherwise."""
    from components.apps import serve

    return serve.mlflow_ui(load_config(), args.host, args.port)


def cmd_serve(args) -> int:
    """A registered model behind `mlflow models serve` (chat requests), on 127.0.0.1 by default."""
    from components.apps import serve

    try:
        return serve.serve(load_config(), args.model, args.host, args.port)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def cmd_schedule(args) -> int:
    """Serve a deployment of the pipeline on a cron schedule (flows/schedule.py)."""
    from flows.schedule import ScheduleError, check_cron, serve_on_schedule

    try:
        check_cron(args.cron, args.timezone)  # before importing the pipeline or starting a server
        from flows.rlhf import rlhf_pipeline

        os.chdir(ROOT)  # the deployment's entrypoint is then flows/rlhf.py:rlhf_pipeline, as in prefect.yaml
        serve_on_schedule(rlhf_pipeline, args.name, args.cron, port=args.server_port, timezone=args.timezone)
    except (ServiceError, ScheduleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ScheduleError) else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf", description="InstructGPT-style RLHF pipeline (Prefect + DVC + MLflow).")
    sub = p.add_subparsers(dest="command", required=True)

    def with_overrides(sp, profile=True):
        sp.add_argument("-S", "--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a value of params.yaml (repeatable)")
        if profile:
            sp.add_argument("--profile", help="profile of deltas: quick | test | oasst (profiles/<name>.yaml; sets common.profile)")
        return sp

    sp = with_overrides(sub.add_parser("run", help="run the whole pipeline (edits params.yaml with -S/--profile, like dvc exp run)"))
    sp.add_argument("--debug", action="store_true", help="on a failed stage, also print Prefect's traceback")
    sp.set_defaults(func=cmd_run)
    sp = with_overrides(sub.add_parser("params", help="print the resolved configuration"))
    sp.add_argument("--defaults", action="store_true",
                    help="print the default params.yaml, rendered from components/core/config.py")
    sp.set_defaults(func=cmd_params)
    sp = with_overrides(sub.add_parser("validate", help="run the great-expectations gate on a data folder"))
    sp.add_argument("--data", help="data folder (default: common.data_dir)")
    sp.add_argument("--report-dir", help="where report.json/html go (default: outputs/validate for the pipeline's "
                                         "data, outputs/validate_other/<folder>-<hash> for another folder)")
    sp.set_defaults(func=cmd_validate)

    sp = with_overrides(sub.add_parser("evaluate", help="evaluate one model: truthfulness, toxicity, NLP tasks, win rate vs SFT"))
    sp.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version> or a model folder")
    sp.add_argument("--reference", help="model to compare with (default: outputs/<evaluate.reference>)")
    sp.add_argument("--out", help="also write the metrics to this JSON file")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 and print its URL")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=5000)
    sp.set_defaults(func=cmd_ui)

    sp = sub.add_parser("serve", help="serve a registered model over HTTP (OpenAI-style chat) and print its URL")
    sp.add_argument("--model", default="models:/policy@champion",
                    help="models:/<name>@<alias>, models:/<name>/<version> or an MLflow model folder (default: %(default)s)")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=5001)
    sp.set_defaults(func=cmd_serve)
    sp = sub.add_parser("schedule", help="run the pipeline on a cron schedule (serves a Prefect deployment)")
    sp.add_argument("--cron", required=True, help='cron string, e.g. "0 3 * * *" (03:00 every day)')
    sp.add_argument("--timezone", help="time zone of the cron string, e.g. Europe/Paris (default: UTC)")
    sp.add_argument("--name", default="scheduled", help="deployment name (default: %(default)s)")
    sp.add_argument("--server-port", type=int,
                    help="port of the local Prefect server started when PREFECT_API_URL is unset (default: 4200, else a free one)")
    sp.set_defaults(func=cmd_schedule)

    sp = with_overrides(sub.add_parser("sample", help="sample K answers per prompt into the labeling queue"))
    sp.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version> or a model folder")
    sp.add_argument("--prompts", required=True, help="prompts file ({id, prompt, prompt_type?, user_id?} per line)")
    sp.add_argument("--k", type=int, help="answers per prompt (default: label.k)")
    sp.add_argument("--out", help="queue file (default: label.queue)")
    sp.set_defaults(func=cmd_sample)
    sp = with_overrides(sub.add_parser("label", help="rank the queue on a web page (or --simulated, --report, --commit)"))
    sp.add_argument("--queue", help="queue file (default: label.queue)")
    sp.add_argument("--out", help="comparisons file the rankings are appended to (default: label.comparisons)")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8765)
    sp.add_argument("--labeler", default="labeler", help="labeler name shown on the page (user_id of the records)")
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--simulated", action="store_true", help="rank the queue with the simulated labeler")
    mode.add_argument("--report", action="store_true", help="progress per labeler and inter-labeler agreement")
    mode.add_argument("--commit", action="store_true", help="run the data gate, then dvc add the data folder")
    sp.add_argument("--labelers", type=int, help="simulated labelers (default: label.labelers)")
    sp.add_argument("--compare", nargs=2, metavar=("MODEL_A", "MODEL_B"),
                    help="blind A/B: one answer of each model per prompt, models hidden; judgements go to "
                         "<common.data_dir>/judgements.jsonl (with --simulated: the simulated labeler judges)")
    sp.add_argument("--prompts", help="with --compare: prompts file to sample the A/B queue from "
                                      "(default: <common.data_dir>/prompts.jsonl; label.ab_prompts of them)")
    sp.set_defaults(func=cmd_label)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_command", required=True)
    sp = with_overrides(data.add_parser("synth", help="generate the built-in simulated-labeler data set"))
    sp.add_argument("--out", help="output folder (default: common.data_dir, then tracked with dvc add)")
    sp.add_argument("--force", action="store_true", help="overwrite existing data")
    sp.set_defaults(func=cmd_data_synth)
    sp = data.add_parser("import", help="convert real preference data to the project format")
    sp.add_argument("kind", choices=["hh-rlhf", "oasst"])
    sp.add_argument("src", help="hh-rlhf .jsonl(.gz) or oasst trees .jsonl")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--limit", type=int, help="stop after this many source records")
    sp.add_argument("--force", action="store_true", help="overwrite existing files")
    sp.set_defaults(func=cmd_data_import)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes as a stage's (components/core/errors.py): 2 bad params, 3 bad input."""
    set_offline_env()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
