"""``napari-detection-qc``: the plugin's pipeline from the command line (argument parsing only;
the work is in ``run`` and ``store``).

    napari-detection-qc demo                                   the whole loop on the bundled sample
    napari-detection-qc detect IMAGES... --out DETECTIONS      masks and boxes, resumable
    napari-detection-qc score DETECTIONS                       predicted F1/precision/recall per frame,
                                                               estimated true count (and density) with intervals
    napari-detection-qc rank DETECTIONS --out next.csv         which frames to label next, best first
    napari-detection-qc evaluate DETECTIONS --ground-truth GT  true precision/recall/F1 per frame
    napari-detection-qc export-coco DETECTIONS --out FILE.json detections as COCO JSON (RLE masks)
    napari-detection-qc fit-forest TABLE.csv --out FOREST      a quality forest from labeled frames
    napari-detection-qc finetune IMAGES --ground-truth LABELS|COCO.json --out model.pt
                                                               adapt the detector (and its forest)

Exit codes: 0 done; 1 some inputs failed and were skipped (``--keep-going``); 2 usage or input
error (the message names the file); 3 out of memory or disk space (the message names the input
and frame; free some or use a bigger machine, then rerun to resume); 4 internal error (a bug: the
traceback is printed, please report it); 130 interrupted (rerun to resume).

Heavy libraries (torch, scikit-learn, pandas) are imported by the commands that need them, so
``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from napari_detection_qc import __version__
from napari_detection_qc.io import SUPPORTED_SUFFIXES
from napari_detection_qc.paper import DEFAULT_MAX_DETECTIONS, PAPER_IOU_THRESHOLD

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_RESOURCES, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def say(message: str) -> None:
    """A line on stderr that does not tear a progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def report_error(message: str) -> None:
    say(f"error: {message}")


def report_warning(message: str) -> None:
    say(f"warning: {message}")


def exit_code(failures: list[str]) -> int:
    """1 when some inputs were skipped (``--keep-going``), else 0."""
    if failures:
        say(f"{len(failures)} input(s) failed and were skipped")
        return EXIT_SOME_FAILED
    return EXIT_OK


def detector_spec(args):
    """Paths are made absolute so that workers started elsewhere find the same model file."""
    from napari_detection_qc.batch.run.detector import DetectorSpec

    model = args.model if args.model == "default" else str(Path(args.model).resolve())
    config = None if args.config is None else str(Path(args.config).resolve())
    return DetectorSpec(
        model,
        config,
        args.device,
        args.score_threshold,
        args.max_detections,
        args.object_size,
        args.signals,
        args.second_look,
    )


def check_outputs(outputs, inputs) -> None:
    """Refuse, before any work, an output that would overwrite an input or cannot be written."""
    from napari_detection_qc.io import InputError
    from napari_detection_qc.io.atomic import output_problem

    inputs = [Path(p) for p in inputs]
    for output in outputs:
        problem = output_problem(Path(output), inputs)
        if problem:
            raise InputError(problem)


def store_files(stores) -> list[Path]:
    """The files of detection stores that a command reads (so that no --out replaces one)."""
    return [
        path
        for store in stores
        for path in (
            store.meta_path,
            store.table_path,
            store.masks_path,
            store.signals_path,
            store.frames_table_path,
        )
    ]


def model_files(args) -> list[Path]:
    return [Path(p) for p in (args.model, getattr(args, "config", None)) if p not in (None, "default")]


# -- subcommands -----------------------------------------------------------------------------------
def run_detect(args) -> int:
    from napari_detection_qc.batch.run.detect import detect
    from napari_detection_qc.batch.run.executors import open_executor

    with open_executor(args.workers, args.scheduler, scratch_parent=args.out) as executor:
        report = detect(
            args.inputs,
            args.out,
            detector_spec(args),
            executor,
            on_error=report_error if args.keep_going else None,
            progress=not args.no_progress,
            pixel_size_table=args.pixel_sizes,
        )
    say(
        f"{report.detected_frames} frame(s) detected, {report.skipped_frames} already done; "
        f"{len(report.stores)} input(s) complete in {args.out}"
    )
    for warning in report.mis_sized:
        report_warning(warning)
    return exit_code(report.failures)


def run_score(args) -> int:
    from napari_detection_qc.batch.run.quality import score_stores
    from napari_detection_qc.batch.store import find_stores, write_csv

    stores = find_stores(args.detections)
    out = args.out or Path(args.detections) / "quality.csv"
    check_outputs([out], [*store_files(stores), Path(args.forest)])
    table, failures = score_stores(
        stores,
        args.forest,
        warn=report_warning,
        on_error=report_error if args.keep_going else None,
    )
    write_csv(Path(out), table)
    say(f"predicted quality of {len(table)} frame(s) written to {out}")
    return exit_code(failures)


def run_rank(args) -> int:
    from napari_detection_qc.batch.run.quality import rank_stores
    from napari_detection_qc.batch.store import find_stores, write_csv

    table, failures = rank_stores(
        find_stores(args.detections),
        args.forest,
        warn=report_warning,
        on_error=report_error if args.keep_going else None,
        limit=args.limit,
    )
    write_csv(Path(args.out), table)
    say(f"{len(table)} frame(s) ranked for labelling, best first, written to {args.out}")
    return exit_code(failures)


def run_evaluate(args) -> int:
    from napari_detection_qc.batch.run.quality import evaluate_stores
    from napari_detection_qc.batch.store import find_stores, write_csv

    stores = find_stores(args.detections)
    out = args.out or Path(args.detections) / "evaluation.csv"
    check_outputs([out], [*store_files(stores), args.ground_truth])
    table, failures = evaluate_stores(
        stores,
        args.ground_truth,
        iou_threshold=args.iou,
        with_features=args.with_features,
        on_error=report_error if args.keep_going else None,
        category=args.category,
    )
    write_csv(Path(out), table)
    say(f"true quality of {len(table)} frame(s) written to {out}")
    return exit_code(failures)


def run_export_coco(args) -> int:
    from napari_detection_qc.batch.store import find_stores, store_detections
    from napari_detection_qc.detections.coco import detections_to_coco, write_coco

    stores = find_stores(args.detections)
    check_outputs([args.out], store_files(stores))
    data = detections_to_coco(store_detections(store) for store in stores)
    write_coco(args.out, data)
    say(f"{len(data['annotations'])} detection(s) on {len(data['images'])} image(s) written to {args.out}")
    return EXIT_OK


def run_fit_forest(args) -> int:
    """Fit, save, then cross-validate: a CV the table is too small for is a warning, and the
    forest is saved regardless."""
    from napari_detection_qc.batch.run.quality import feature_selection, read_training_table
    from napari_detection_qc.batch.store import find_stores
    from napari_detection_qc.quality.forest import TARGETS, QualityForest

    check_outputs(
        [args.out],
        [args.table, *(store_files(find_stores(args.detector_meta)) if args.detector_meta else [])],
    )
    features = feature_selection(args.features)
    table = read_training_table(args.table, features)
    groups = table[args.group_column].astype(str).to_numpy() if args.group_column in table.columns else None
    detector = find_stores(args.detector_meta)[0].read_meta()["detector"] if args.detector_meta else None
    forest = QualityForest(
        features=features, n_estimators=args.trees, random_state=args.seed, detector=detector
    )
    try:
        forest.fit(table[list(features)], table[list(TARGETS)], groups)
    except ValueError as exc:
        raise ValueError(f"{args.table}: {exc}") from exc
    forest.save(args.out)
    say(f"forest on {len(table)} frame(s) and features {', '.join(features)} saved to {args.out}")
    if args.cv:
        print_cross_validation(forest, table, groups, args.cv_repeats)
    return EXIT_OK


def print_cross_validation(forest, table, groups, repeats: int) -> None:
    from napari_detection_qc.quality.forest import TARGETS

    features, targets = table[list(forest.features)], table[list(TARGETS)]
    schemes = [("random 5-fold", "random")]
    if groups is not None and len(set(groups)) >= 2:
        schemes.append(("leave one group out", "grouped"))
    for title, scheme in schemes:
        try:
            result = forest.cross_validate(features, targets, scheme=scheme, groups=groups, n_repeats=repeats)
        except ValueError as exc:
            report_warning(f"{title} cross-validation skipped: {exc}")
            continue
        print(f"{title} cross-validation (mean over folds):")
        print(result.summary.round(3).to_string())


def run_demo(args) -> int:
    from napari_detection_qc.batch.run.demo import run_demo as demo

    result = demo(args.frames, detector_spec(args), args.forest, progress=not args.no_progress)
    if result.forest_note:
        report_warning(result.forest_note)
    print(demo_table(result).to_string(index=False))
    if result.f1_mae is not None:
        print(f"\nmean absolute error of predicted F1: {result.f1_mae:.3f} over {len(result.true)} frame(s)")
    return EXIT_OK


def demo_table(result):
    """frame, preset, detections, predicted F1 [low-high], in-domain, true F1 as readable text."""
    import pandas as pd

    true = result.true
    table = pd.DataFrame(
        {"frame": true["frame"], "preset": list(result.presets), "detections": true["n_pred"]}
    )
    if result.predicted is not None:
        predicted = result.predicted
        table["predicted F1 [interval]"] = [
            f"{f1:.2f} [{low:.2f}-{high:.2f}]"
            for f1, low, high in zip(predicted["f1"], predicted["f1_low"], predicted["f1_high"])
        ]
        table["in domain"] = ["yes" if flag else "NO" for flag in predicted["in_domain"]]
    table["true F1"] = [f"{f1:.2f}" for f1 in true["f1"]]
    return table


# -- argument parsing ------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def object_size(text: str) -> float | None:
    """``auto`` (None) or a positive diameter in pixels."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a diameter in pixels, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the object size must be a positive number of pixels, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1] (a score threshold)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def iou_threshold(text: str) -> float:
    """A box IoU in (0, 1]: at 0 every pair of boxes, even disjoint ones, would match."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, but no "(default: None)" for options without one."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (the bundled detector), a checkpoint .pt, or a detectron2 .pth",
    )
    parser.add_argument("--config", help="detectron2 config .yaml for a .pth model (optional)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def add_detector_options(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument(
        "--object-size",
        type=object_size,
        default="auto",
        help="typical cavity diameter in pixels at the image's native resolution, or auto (estimated per frame)",
    )
    parser.add_argument(
        "--no-second-look",
        dest="second_look",
        action="store_false",
        help="keep the detections the model's second look (its detection verifier) would drop as background; "
        "try it where real objects go missing",
    )


def add_finetune_command(commands) -> None:
    finetune = add_subcommand(
        commands,
        "finetune",
        help="labelled images -> a fine-tuned detector, its forest beside it, training curves",
        description="Fine-tune a torchvision-engine detector on labelled frames (a frame or two held out for "
        "early stopping and the score threshold), then fit the forest for it. Writes OUT, OUT's stem + "
        ".forest.skops (found by score --forest auto), .curves.csv and .curves.png.",
    )
    finetune.add_argument("images", nargs="+", type=Path, help="image files or folders")
    finetune.add_argument(
        "--ground-truth",
        type=Path,
        required=True,
        help="folder of label images named like the inputs (0 background, one id per object), or a COCO JSON "
        "file (polygons, RLE, or boxes only: the mask head then learns the ellipse inscribed in each box)",
    )
    finetune.add_argument("--out", type=Path, required=True, help="the fine-tuned checkpoint to write (.pt)")
    add_model_options(finetune)
    budget = finetune.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="training time budget (default 10)")
    budget.add_argument("--steps", type=positive_int, help="optimiser steps instead of a time budget")
    finetune.add_argument(
        "--synthetic-frames",
        type=positive_int,
        default=4,
        help="synthetic study frames per domain (presets and realistic families) for the forest",
    )
    finetune.add_argument("--seed", type=int, default=0, help="random seed of the training crops")
    finetune.add_argument("--no-progress", action="store_true", help="no progress bar")
    finetune.set_defaults(
        run=run_finetune,
        interrupted="nothing was written (the model, its forest and curves are saved at the end)",
        score_threshold=None,
        max_detections=DEFAULT_MAX_DETECTIONS,
        object_size=None,
        signals="none",
        second_look=True,
    )


def add_subcommand(commands, name: str, **kwargs) -> argparse.ArgumentParser:
    return commands.add_parser(name, formatter_class=HelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-detection-qc",
        description="Detect cavities in TEM images and predict the detections' quality without labels.",
        epilog="exit codes: 0 done, 1 some inputs skipped (--keep-going), 2 usage or input error, "
        "3 out of memory or disk space, 4 internal error, 130 interrupted",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    detect = add_subcommand(
        commands,
        "detect",
        help="images or stacks -> masks and boxes (resumable)",
        description="Detect every frame; a rerun skips the frames already done.",
    )
    detect.add_argument(
        "inputs", nargs="+", type=Path, help=f"files or folders of {', '.join(SUPPORTED_SUFFIXES)}"
    )
    detect.add_argument("--out", type=Path, required=True, help="output folder (one subfolder per input)")
    add_detector_options(detect)
    detect.add_argument(
        "--score-threshold",
        type=fraction,
        help="keep detections scoring at least this (default: the model's own, which fine-tuned models "
        "carry, else 0.1 as the forests were trained)",
    )
    detect.add_argument(
        "--max-detections", type=positive_int, default=DEFAULT_MAX_DETECTIONS, help="per frame"
    )
    where = detect.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=positive_int, default=1, help="local worker processes (Dask LocalCluster)"
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="an existing Dask scheduler, e.g. tcp://host:8786 (its workers must see the same files)",
    )
    detect.add_argument(
        "--pixel-sizes",
        type=Path,
        metavar="TABLE",
        help="CSV/TSV of 'image name, nm per pixel' (header optional); overrides the files' own",
    )
    detect.add_argument(
        "--signals",
        choices=("none", "cheap", "all"),  # signals.SIGNAL_LEVELS (not imported: --help stays fast)
        default="cheap",
        help="the detector's label-free signals stored with each frame, for forests that use them: "
        "cheap = backbone embedding (the default forest's novelty check: its domain flag and intervals that "
        "widen on unfamiliar frames; one extra backbone pass), none = nothing extra, all = also TTA agreement "
        "under flips and rotation (adding about 0.8x the detection time (box-only passes))",
    )
    detect.add_argument("--keep-going", action="store_true", help="skip unreadable files instead of stopping")
    detect.add_argument("--no-progress", action="store_true", help="no progress bar")
    detect.set_defaults(
        run=run_detect, interrupted="finished frames are kept, rerun the same command to resume"
    )

    score = add_subcommand(
        commands, "score", help="detections -> predicted F1/precision/recall per frame (CSV)"
    )
    score.add_argument("detections", type=Path, help="the output folder of detect (or one input's subfolder)")
    score.add_argument(
        "--forest",
        default="auto",
        help="auto (the bundled forest for the detector), default, li2025, or a forest file; the detector "
        "signals stored by detect --signals are used by forests fitted with them",
    )
    score.add_argument("--out", type=Path, help="CSV to write (default DETECTIONS/quality.csv)")
    score.add_argument(
        "--keep-going", action="store_true", help="skip unreadable detections instead of stopping"
    )
    score.set_defaults(run=run_score)

    rank = add_subcommand(
        commands,
        "rank",
        help="detections -> which frames to label next, best first (CSV: source, frame, reason)",
    )
    rank.add_argument("detections", type=Path, help="the output folder of detect (or one input's subfolder)")
    rank.add_argument("--forest", default="auto", help="as for score")
    rank.add_argument("--out", type=Path, required=True, help="CSV to write")
    rank.add_argument("--limit", type=positive_int, help="rank only this many frames (default all)")
    rank.add_argument(
        "--keep-going", action="store_true", help="skip unreadable detections instead of stopping"
    )
    rank.set_defaults(run=run_rank)

    evaluate = add_subcommand(
        commands, "evaluate", help="detections + ground truth -> true precision/recall/F1 (CSV)"
    )
    evaluate.add_argument(
        "detections", type=Path, help="the output folder of detect (or one input's subfolder)"
    )
    evaluate.add_argument(
        "--ground-truth",
        type=Path,
        required=True,
        help="a Labels stack file, a folder of them named like the inputs, or a COCO .json",
    )
    evaluate.add_argument("--category", help="the COCO category to evaluate (needed when it has several)")
    evaluate.add_argument(
        "--iou", type=iou_threshold, default=PAPER_IOU_THRESHOLD, help="box IoU for a match"
    )
    evaluate.add_argument(
        "--with-features", action="store_true", help="add the 18 features, so the CSV can feed fit-forest"
    )
    evaluate.add_argument("--out", type=Path, help="CSV to write (default DETECTIONS/evaluation.csv)")
    evaluate.add_argument(
        "--keep-going", action="store_true", help="skip unreadable inputs instead of stopping"
    )
    evaluate.set_defaults(run=run_evaluate)

    export = add_subcommand(
        commands,
        "export-coco",
        help="detections -> COCO JSON (RLE masks, xywh boxes, scores; category cavity)",
    )
    export.add_argument(
        "detections", type=Path, help="the output folder of detect (or one input's subfolder)"
    )
    export.add_argument("--out", type=Path, required=True, help="COCO .json to write")
    export.set_defaults(run=run_export_coco)

    fit = add_subcommand(
        commands, "fit-forest", help="training table (features + f1, precision, recall) -> forest"
    )
    fit.add_argument("table", type=Path, help="CSV, e.g. from evaluate --with-features")
    fit.add_argument("--out", type=Path, required=True, help="forest file to write (.skops)")
    fit.add_argument("--features", default="paper", help="paper (8), all (18) or a comma-separated list")
    fit.add_argument("--group-column", default="group", help="column of domain labels for grouped CV")
    fit.add_argument("--trees", type=positive_int, default=100, help="trees per forest")
    fit.add_argument("--seed", type=int, default=0, help="random seed of the forest")
    fit.add_argument(
        "--detector-meta",
        type=Path,
        help="detections folder whose detector the forest is for (enables mismatch warnings)",
    )
    fit.add_argument("--cv", action="store_true", help="print cross-validated RMSE/MAE/R2 after saving")
    fit.add_argument("--cv-repeats", type=positive_int, default=3, help="repeats of random 5-fold CV")
    fit.set_defaults(run=run_fit_forest)

    demo = add_subcommand(commands, "demo", help="the whole loop on the bundled sample stack, as a table")
    demo.add_argument("--frames", type=positive_int, help="only the first N frames (of 20)")
    add_detector_options(demo)
    demo.add_argument("--forest", default="auto", help="auto, default, li2025 or a forest file")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(
        run=run_demo, score_threshold=None, max_detections=DEFAULT_MAX_DETECTIONS, signals="cheap"
    )
    add_finetune_command(commands)
    return parser


def run_finetune(args) -> int:
    """Fine-tune, fit the new detector's forest, write model, forest and curves (logic in core modules)."""
    from tqdm.auto import tqdm

    from napari_detection_qc.engines.finetune import finetune
    from napari_detection_qc.finetune.detector_forest import fit_detector_forest
    from napari_detection_qc.finetune.outputs import curve_paths, read_labelled_frames, save_finetuned
    from napari_detection_qc.io.atomic import remove_stale_temporary_files
    from napari_detection_qc.quality.forest_choice import companion_forest_path
    from napari_detection_qc.validation import list_regular_inputs

    inputs = [path for item in args.images if Path(item).exists() for path in list_regular_inputs(item)]
    truth = Path(args.ground_truth)  # a label folder, or a COCO file
    inputs += list_regular_inputs(truth) if truth.is_dir() else [truth]
    check_outputs(
        [args.out, companion_forest_path(args.out), *curve_paths(args.out)], [*inputs, *model_files(args)]
    )
    if args.out.parent.is_dir():
        remove_stale_temporary_files(args.out.parent)  # what a killed earlier run left half written
    labelled = read_labelled_frames(args.images, args.ground_truth)
    images, truths, names = labelled.images, labelled.truths, labelled.names
    say(f"{len(images)} labelled frame(s) from {len({n.split('#')[0] for n in names})} file(s)")
    for note in labelled.notes:
        say(note)
    detector = detector_spec(args).load()
    with tqdm(total=100, desc="fine-tuning", unit="%", disable=args.no_progress) as bar:

        def progress(report) -> None:
            bar.n = round(100 * report.fraction)
            bar.set_postfix(
                step=report.step,
                loss=f"{report.row['loss_total']:.3f}",
                **({"heldout_f1": f"{report.row['val_f1']:.3f}"} if "val_f1" in report.row else {}),
            )

        result = finetune(
            detector,
            images,
            truths,
            steps=args.steps,
            minutes=args.minutes,
            device=args.device,
            progress=progress,
            seed=args.seed,
        )
    for note in result.notes:
        report_warning(note)
    if result.after is not None:
        say(
            f"held-out frames {', '.join(names[i] for i in result.validation_frames)}: F1 "
            f"{result.before['f1']:.3f} -> {result.after['f1']:.3f} (score threshold {result.score_threshold:g})"
        )
    with tqdm(total=1, desc="fitting its forest", unit="frame", disable=args.no_progress) as bar:

        def forest_progress(done: int, total: int, _what: str) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        forest = fit_detector_forest(
            result.detector, images, truths, frames_per_domain=args.synthetic_frames, progress=forest_progress
        )
    for path in save_finetuned(result, forest, args.out):
        say(f"wrote {path}")
    return EXIT_OK


def main(argv=None) -> int:
    """Run one subcommand; expected failures end with a one-line message, never a traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_request:  # --help, --version, or a usage error argparse has explained
        return EXIT_OK if not exit_request.code else EXIT_ERROR
    try:
        return args.run(args)
    except KeyboardInterrupt:
        say(f"interrupted; {getattr(args, 'interrupted', 'nothing was written')}")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 (every failure ends in one line and an exit code)
        return report_failure(exc)


def report_failure(exc: Exception) -> int:
    """The exit code of a failed command, after one line saying why (a traceback only for bugs)."""
    from napari_detection_qc.batch.run.errors import ResourceError, is_resource_exhaustion

    if is_resource_exhaustion(exc):
        detail = str(exc) if isinstance(exc, ResourceError) else f"{type(exc).__name__}: {exc}"
        report_error(f"out of memory or disk space: {' '.join(detail.split())}")
        return EXIT_RESOURCES
    if isinstance(exc, (ValueError, OSError)):  # InputError, ForestLoadError, DetectorLoadError; I/O
        from napari_detection_qc.validation import one_line

        report_error(one_line(exc, 1000))  # a refusal is one line, whatever a library put in its text
        return EXIT_ERROR
    traceback.print_exc()
    report_error(f"internal error ({type(exc).__name__}); please report it with the traceback above")
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
