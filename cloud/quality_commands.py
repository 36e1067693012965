"""``edgefleet cloud label import|quality|evaluate``: labels in, model quality out, and the gate
a candidate model passes before it is released."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgefleet.commandline import add_json, add_table_options
from edgefleet.errors import UserError

BY = ("version", "device", "day", "campaign", "version-campaign", "site")


def register(commands: argparse._SubParsersAction, dataset) -> None:
    """Add the commands under ``edgefleet cloud``; ``dataset`` adds the --dataset option."""
    label = commands.add_parser("label", help="labels for samples and records")
    label_commands = label.add_subparsers(dest="label_command", metavar="COMMAND", required=True)
    importing = label_commands.add_parser(
        "import",
        help="import a CSV or Parquet file of labels (id, label, labeller, labelled_at)",
        description="Columns: id (dev:boot:seq of a sample or record; or dev, boot and seq as "
        "an export has them), label (class index), optional labeller and labelled_at (ISO "
        "8601 with zone). Rows with an empty label are skipped. Every row is checked first: "
        "one bad row and nothing is written. Stored as DIR/labels/<hash of the labels>.parquet, "
        "so the same labels imported again change nothing. Ids not in the dataset are counted, "
        "not refused. The newest label of an id wins.",
    )
    importing.add_argument("file", type=Path, metavar="FILE", help="a .csv or .parquet file")
    dataset(importing)
    importing.add_argument("--labeller", help="who labelled the rows that name no labeller")
    add_json(importing, "what was imported")
    importing.set_defaults(handler=run_label_import)

    quality = commands.add_parser(
        "quality",
        help="accuracy, per-class precision and recall, calibration and drift, per version",
        description="Labelled predictions (inference records and samples, joined with their "
        "labels on dev:boot:seq) grouped by --by within each model: accuracy with its Wilson "
        "95% interval, precision and recall by class, the confusion matrix (rows: labels), "
        "expected calibration error over 10 bins of top-1 confidence; and, from the gateways' "
        "summaries, drift per model, version and day (mean and max PSI, alarms).",
    )
    dataset(quality)
    quality.add_argument("--model", help="only this model")
    quality.add_argument("--by", choices=BY, default="version", help="group by")
    add_table_options(quality, "every group with its confusion matrix and calibration bins")
    quality.set_defaults(handler=run_quality)

    evaluate = commands.add_parser(
        "evaluate",
        help="a candidate .tflite against the incumbent on the labelled samples",
        description="Runs CANDIDATE on the labelled samples' stored inputs and compares it "
        "with --against: a VERSION (its samples, and the outputs it recorded on them; default: "
        "the newest version with labelled samples) or a FILE.tflite run on every labelled "
        "sample of the model. Reports both accuracies (Wilson 95% intervals), the paired "
        "difference with its 95% interval and McNemar's p, and recall by class. Exit status 1 "
        "when the candidate's accuracy is below --min-accuracy.",
    )
    evaluate.add_argument("candidate", type=Path, metavar="CANDIDATE", help="a .tflite file")
    dataset(evaluate)
    evaluate.add_argument("--model", help="the model whose samples to use (needed if several)")
    evaluate.add_argument("--against", metavar="VERSION|FILE", help="the incumbent")
    evaluate.add_argument(
        "--min-accuracy", type=float, metavar="X", help="exit 1 if the candidate is below X"
    )
    add_table_options(evaluate, "the comparison")
    evaluate.set_defaults(handler=run_evaluate)


def _check_dataset(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"--dataset {path}: no such directory")


def run_label_import(args: argparse.Namespace) -> int:
    from cloud.labels import LabelError, import_labels

    _check_dataset(args.dataset)
    try:
        done = import_labels(args.dataset, args.file, args.labeller)
    except LabelError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(done.to_json(), indent=2))
        return 0
    state = "written" if done.written else "already imported" if done.path else "nothing stored"
    print(f"{args.file}: {done.rows} labels, {state}" + (f" ({done.path})" if done.path else ""))
    if done.skipped:
        print(f"{done.skipped} rows without a label skipped")
    if done.unknown:
        shown = ", ".join(done.unknown[:5]) + (", ..." if len(done.unknown) > 5 else "")
        print(f"{len(done.unknown)} ids are not in the dataset (yet): {shown}")
    if done.ignored_columns:
        print(f"columns ignored: {', '.join(done.ignored_columns)}")
    return 0


def _number(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _interval(values: list[float] | None, signed: bool = False) -> str | None:
    if values is None:
        return None
    form = "+.3f" if signed else ".3f"
    return f"[{values[0]:{form}}, {values[1]:{form}}]"


def run_quality(args: argparse.Namespace) -> int:
    from cloud.quality import QualityError, Question, measure
    from edgefleet.tables import Column, print_table

    _check_dataset(args.dataset)
    try:
        answer = measure(args.dataset, Question(args.by, args.model))
    except QualityError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    by, groups = args.by, answer["groups"]
    accuracy = [Column("model"), Column(by, right=by == "version"), Column("n", right=True),
                Column("samples", right=True, narrow=False), Column("accuracy", right=True),
                Column("95% interval"), Column("ece", right=True)]  # fmt: skip
    rows = [
        [g["model"], g[by], g["n"], g["samples"], _number(g["accuracy"]),
         _interval(g["interval"]), _number(g["ece"])]
        for g in groups
    ]  # fmt: skip
    print_table(accuracy, rows, title="accuracy", wide=args.wide)
    print()
    classes = [Column("model"), Column(by, right=by == "version"), Column("class", right=True),
               Column("labelled", right=True), Column("predicted", right=True),
               Column("precision", right=True), Column("recall", right=True),
               Column("confused with (label row)", narrow=False)]  # fmt: skip
    rows = [
        [g["model"], g[by], c["class"], c["support"], c["predicted"], _number(c["precision"]),
         _number(c["recall"]), " ".join(map(str, g["confusion"][c["class"]]))]
        for g in groups for c in g["classes"]
    ]  # fmt: skip
    print_table(classes, rows, title="classes", wide=args.wide)
    print()
    drift = [Column("model"), Column("version", right=True), Column("day"),
             Column("summaries", right=True), Column("mean psi", right=True),
             Column("max psi", right=True), Column("alarms", right=True)]  # fmt: skip
    rows = [
        [d["model"], d["version"], d["day"], d["summaries"], _number(d["mean_psi"]),
         _number(d["max_psi"]), d["alarms"]]
        for d in answer["drift"]
    ]  # fmt: skip
    print_table(drift, rows, title="drift", wide=args.wide)
    for note in answer["notes"]:
        print(note, file=sys.stderr)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from cloud.evaluate import EvaluateError, Request, evaluate

    _check_dataset(args.dataset)
    if not args.candidate.is_file():
        raise UserError(f"{args.candidate}: no such file")
    if args.min_accuracy is not None and not 0 <= args.min_accuracy <= 1:
        raise UserError(f"--min-accuracy {args.min_accuracy}: must be 0..1")
    try:
        result = evaluate(args.dataset, Request(args.candidate, args.model, args.against))
    except EvaluateError as exc:
        raise UserError(str(exc)) from None
    passed = args.min_accuracy is None or result["candidate"]["accuracy"] >= args.min_accuracy
    result |= {"min_accuracy": args.min_accuracy, "passed": passed}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_evaluation(result, args.wide)
    if not passed:
        accuracy = result["candidate"]["accuracy"]
        print(f"candidate accuracy {accuracy:.4f} is below --min-accuracy {args.min_accuracy}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _print_evaluation(result: dict[str, Any], wide: bool) -> None:
    from edgefleet.tables import Column, print_table

    incumbent = result["incumbent"]
    name = f"version {incumbent['version']}" if "version" in incumbent else incumbent["file"]
    columns = [Column("model"), Column("correct", right=True), Column("n", right=True),
               Column("accuracy", right=True), Column("95% interval")]  # fmt: skip
    rows = [
        [who, side["correct"], result["n"], _number(side["accuracy"]), _interval(side["interval"])]
        for who, side in (("candidate " + Path(result["candidate"]["file"]).name,
                           result["candidate"]), ("incumbent " + name, incumbent))
    ]  # fmt: skip
    title = f"{result['model']}: {result['n']} labelled samples"
    print_table(columns, rows, title=title, wide=wide)
    print()
    columns = [Column("class", right=True), Column("labelled", right=True),
               Column("candidate recall", right=True), Column("incumbent recall", right=True),
               Column("change", right=True)]  # fmt: skip
    rows = [
        [c["class"], c["support"], _number(c["candidate_recall"]), _number(c["incumbent_recall"]),
         f"{c['change']:+.3f}"]
        for c in result["classes"]
    ]  # fmt: skip
    print_table(columns, rows, title="recall by class", wide=wide)
    print()
    d = result["difference"]
    print(
        f"difference (candidate - incumbent): {d['accuracy']:+.3f} {_interval(d['interval'], True)}"
        f"; right only by the candidate {d['candidate_only']}, only by the incumbent "
        f"{d['incumbent_only']}; McNemar p = {d['mcnemar_p']:.3g}"
    )
