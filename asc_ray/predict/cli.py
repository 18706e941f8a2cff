"""`asc-ray-predict MODEL AUDIO...` (also `python -m asc_ray.predict`): classify recordings into the 10 TAU scenes
with a trained model - a unit folder (`<output>/students/split100/kd_ensemble/seed0`), an MLflow model URI
(`runs:/<id>/model`, `models:/asc-ray-kd_ensemble-split100/1`) or an exported fp16 file (`model_fp16.pt`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from asc_ray.console import run_cli
from asc_ray.errors import AscRayError
from asc_ray.export import write_dcase_output
from asc_ray.mlflow_store import OUTPUT_DIR_HELP, STORE_URIS, URI_HELP
from asc_ray.predict.classifier import EXAMPLE_MODEL, EXAMPLE_UNIT
from asc_ray.predict.files import classify_files, find_audio, load_classifier
from asc_ray.tracking import open_store


def _table(names: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> str:
    w = max([len("filename"), *map(len, names)])
    head = f"{'filename':<{w}}  {'scene_label':<17}  " + "  ".join(f"{c[:8]:>8}" for c in classes)
    lines = [head]
    for n, p in zip(names, probs, strict=True):
        lines.append(f"{n:<{w}}  {classes[int(p.argmax())]:<17}  " + "  ".join(f"{x:>8.4f}" for x in p))
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "asc-ray-predict") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Classify recordings into the 10 TAU acoustic scenes with a trained asc-ray model.",
        epilog="Audio of any sample rate, channel count and length that soundfile reads is accepted: channels "
        "are averaged, the audio is resampled to the model's rate (32 kHz, or 44.1 kHz for bcbl24). Clips "
        "longer than 1 s are classified per 1-s window (consecutive windows, the last one ending at the "
        "clip's end) and the window probabilities are averaged; shorter clips are zero-padded to 1 s. "
        "Exit status: 0 all classified; 1 some files could not be read (the rest are classified, the "
        "failures listed on stderr); 2 bad input (model or audio not found, nothing readable).",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help=f"unit folder ({EXAMPLE_UNIT}: its model_fp16.pt), exported model_fp16.pt, or MLflow model URI "
        f"(runs:/<run id>/model, {EXAMPLE_MODEL}/<version>)",
    )
    p.add_argument("audio", metavar="AUDIO", nargs="+", help="audio files, folders (recursive) or globs")
    p.add_argument(
        "--out",
        default=None,
        help="write a tab-separated file in the DCASE output.csv layout (filename, scene_label, one "
        "probability per scene) instead of printing a table",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    p.add_argument(
        "--output-dir",
        default=None,
        metavar="OUTPUT_DIR",
        help=f"for a models:/ or runs:/ MODEL: {OUTPUT_DIR_HELP}",
    )
    p.add_argument(
        "--tracking-uri", default=None, metavar="URI", help=f"for a models:/ or runs:/ MODEL: {URI_HELP}"
    )
    a = p.parse_args(argv)
    files = find_audio(a.audio)
    # a runs:/ or models:/ MODEL is looked up in the store of the rule (said on stderr), never in a new one
    store = open_store(a.tracking_uri, a.output_dir).uri if a.model.startswith(STORE_URIS) else None
    clf = load_classifier(a.model, a.device, store)
    ok, probs, failed = classify_files(clf, files)
    if not ok:
        first = failed[0][1]
        raise AscRayError(
            f"none of the {len(files)} audio file(s) could be read; first: {first.problem}",
            path=first.path,
            fix=first.fix,
        )
    names = [str(f) for f in ok]
    if a.out:
        # log of the averaged probabilities: write_dcase_output's softmax gives them back exactly
        write_dcase_output(a.out, names, np.log(np.clip(probs, 1e-30, None)))
        print(
            f"{len(ok)} file(s) classified with {clf.spec['system']} ({clf.source}): {a.out}", file=sys.stderr
        )
    else:
        print(_table(names, probs, clf.spec["classes"]))
    if failed:
        print(f"{len(failed)} file(s) could not be classified:", file=sys.stderr)
        for f, e in failed:
            print(f"  {f}: {e.problem}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """Console script entry point (asc-ray-predict)."""
    run_cli(main)
