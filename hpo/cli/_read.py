"""The commands that read studies: status, best, studies, trials, report, dashboard, export,
retrain, verify."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hpo.cli._handle import EXIT_FAILURE, EXIT_OK, Handle, say, warn
from hpo.errors import HpoError


def status(h: Handle) -> int:
    from hpo.results.summary import format_status, status_record

    record = status_record(h.study)
    print(json.dumps(record, indent=2) if h.args.json else format_status(record))
    return EXIT_OK


def best(h: Handle) -> int:
    from hpo.results.summary import best_record, best_text, pareto_records

    study, gap = h.study, h.args.overfit_gap
    text = best_text(study, gap)
    if text is None:
        raise HpoError(f"study {h.args.study!r} has no complete trial yet")
    if h.args.json:  # several objectives: the Pareto set, a list
        several = len(study.directions) > 1
        record = pareto_records(study) if several else best_record(study, overfit_gap=gap)
        text = json.dumps(record, indent=2)
    print(text)
    return EXIT_OK


def studies(h: Handle) -> int:
    from hpo.results.summary import format_studies, studies_records

    records = studies_records(h.storage())
    print(json.dumps(records, indent=2) if h.args.json else format_studies(records))
    return EXIT_OK


def trials(h: Handle) -> int:
    from hpo.results.export import write_trials
    from hpo.store.artifacts import artifact_dir

    args = h.args
    study = h.study
    store = artifact_dir(h.url)  # uploads removed from it are not named
    if args.out is None:
        write_trials(study, args.format, sys.stdout, store)
        return EXIT_OK
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            n = write_trials(study, args.format, f, store)
    except OSError as e:
        raise HpoError(f"cannot write {args.out}: {e.strerror or e}") from None
    print(f"hpo: {n} trials written to {args.out}", file=sys.stderr)
    return EXIT_OK


def report(h: Handle) -> int:
    from hpo.results.report import write_pngs, write_report

    args = h.args
    study = h.study
    others = [h.study_named(name) for name in args.compare]
    path, _, figures = write_report(
        study,
        Path(args.out) if args.out else None,
        compare=others,
        dashboard=not args.no_dashboard,
        storage=h.shown,
    )
    say(
        f"hpo: report of {args.study} written to {path} "
        f"({path.stat().st_size / 1e6:.1f} MB, opens with no network)"
    )
    if not args.no_dashboard:
        say(
            f"hpo: {len(figures)} figures and a summary note saved into the study; "
            "see them with: hpo dashboard"
        )
    if args.png:
        pngs = write_pngs(figures, path.with_suffix(""))
        say(
            f"hpo: {len(pngs)} PNGs written to {path.with_suffix('')}"
            if isinstance(pngs, list)
            else f"hpo: no PNGs: {pngs}"
        )
    return EXIT_OK


def dashboard(h: Handle) -> int:
    from hpo.results.dashboard import serve

    args = h.args

    def ready(address: str, artifacts: str) -> None:
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            say(
                f"hpo: warning: listening on {args.host}: anyone who reaches this port can "
                "read and change the studies (optuna-dashboard has no login)"
            )
        say(f"hpo: optuna-dashboard on {h.shown}; artifacts in {artifacts}")
        say(f"hpo: open {address}   (Ctrl-C stops it)")

    try:
        serve(h.url, host=args.host, port=args.port, artifacts=args.artifacts, on_ready=ready)
    except KeyboardInterrupt:
        say("hpo: dashboard stopped")
    return EXIT_OK


def export(h: Handle) -> int:
    from hpo.results.export import export_best, format_export
    from hpo.results.report import default_path
    from hpo.run.tracking import log_export

    study, spec = h.load()
    out = Path(h.args.out) if h.args.out else Path("exports") / default_path(h.args.study).stem
    record = export_best(
        study, spec, out, storage_url=h.url, artifacts=h.args.artifacts, trial_number=h.args.trial
    )
    say(format_export(record, out))
    tracked = log_export(spec, study.study_name, out, record["trial"]["number"])
    if tracked is not None:  # tracking.mlflow: the export goes into the study's run
        logged, line = tracked
        (say if logged else warn)(line)
    return EXIT_OK


def retrain(h: Handle) -> int:
    from hpo.results.retrain import format_retrain
    from hpo.results.retrain import retrain as retrain_best

    study, spec = h.load()
    record = retrain_best(
        study,
        spec,
        out=h.args.out,
        trial_number=h.args.trial,
        epochs=h.args.epochs,
        storage_url=h.url,
        say=say,
    )
    say(format_retrain(record))
    return EXIT_OK


def verify(h: Handle) -> int:
    from hpo.results.verify import format_verification
    from hpo.results.verify import verify as rerun

    study, spec = h.load()
    if not h.args.json:
        which = "the best trial" if h.args.trial is None else f"trial #{h.args.trial}"
        say(f"hpo: rerunning {which} of {study.study_name} from its recorded params and seed")
    result = rerun(study, spec, h.args.trial, threads=h.args.threads, tolerance=h.args.tolerance)
    print(json.dumps(result.as_dict(), indent=2) if h.args.json else format_verification(result))
    return EXIT_OK if result.verdict != "differs" else EXIT_FAILURE
