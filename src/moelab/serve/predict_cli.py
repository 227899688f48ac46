"""`predict`: ask trained variants about a file of inputs and write their answers as a CSV.

    python run/predict.py INPUT --experiment experiments/<name> [--job KEY --variant NAME] [--out FILE]

INPUT is a CSV (one input per row, flat, raw scale; a header row is skipped), an NPY array
([N, ...] or one input), a picture, or a folder of pictures. Without --job/--variant every variant
answers through its best run by validation metric. One row per input and answering run: the
prediction, the class probabilities (or regression outputs), and for MoE models the experts the
input went to, best first, with their gate weights. A folder's pictures that cannot be read are
named and left out. The CSV goes next to INPUT (predictions.csv) unless --out says where.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from moelab.results.io import atomic_write
from moelab.serve.inputs import INVERT_CHOICES, read_input_file


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0],
                                     epilog="raw scales: digits 8x8 values 0-16; mnist, fashion_mnist 28x28 values "
                                            "0-1; cifar10 3x32x32 values 0-1; image_fit (x, y) in [-1, 1]")
    parser.add_argument("input", type=Path, help="CSV, NPY, a picture, or a folder of pictures")
    parser.add_argument("--experiment", type=Path, required=True, help="the experiment folder, experiments/<name>")
    parser.add_argument("--job", help="the job key (default: every variant's best run)")
    parser.add_argument("--variant", help="the variant name (default: every variant)")
    parser.add_argument("--out", type=Path, help="CSV to write (default: predictions.csv next to INPUT)")
    parser.add_argument("--invert", choices=INVERT_CHOICES, default="auto",
                        help="pictures: dark ink on light paper is inverted (auto: when the border is light)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from moelab.serve.catalog import Catalog
    from moelab.serve.errors import ServeError
    from moelab.serve.predictor import Predictor

    try:
        catalog = Catalog.from_paths([args.experiment], args.experiment.parent)
        predictor = Predictor(catalog)
        runs = predictor.select(args.experiment.name, args.job, args.variant)
        fmt, dataset = predictor.input_format(runs)
        unreadable: list[str] = []
        raw, names = read_input_file(args.input, fmt, dataset, args.invert, unreadable)
        for problem in unreadable:
            print(f"predict: left out: {problem}", file=sys.stderr)
        answers = predictor.answer(runs, raw, names)
    except (ServeError, ValueError) as error:
        print(f"predict: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    rows = csv_rows(answers)
    out = args.out or args.input.parent / "predictions.csv"

    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(out, write)
    print(f"{len(raw)} input(s) x {len(answers)} run(s) -> {out}"
          + (f"; {len(unreadable)} picture(s) left out" if unreadable else ""))
    for answer in answers:
        print(f"  {answer['variant']:<16} job {answer['job']}  ({answer['selected']})")
    return 0


def csv_rows(answers: list[dict]) -> list[dict]:
    """One row per input and run, input by input."""
    rows = []
    for i in range(len(answers[0]["predictions"])):
        for answer in answers:
            p = answer["predictions"][i]
            row = {"input": p["input"], "experiment": answer["experiment"], "job": answer["job"],
                   "variant": answer["variant"], "model": answer["model"]}
            if "predicted" in p:
                row["predicted"] = p["predicted"]
                if answer["classes"]:
                    row["predicted_name"] = answer["classes"][p["predicted"]]
                row.update({f"p_{c}": v for c, v in enumerate(p["probabilities"])})
            else:
                row.update({f"output_{c}": v for c, v in enumerate(p["outputs"])})
            # dense models have no routing: empty cells keep one set of columns for every row
            row["experts"] = " ".join(map(str, p.get("experts", [])))
            row["expert_weights"] = " ".join(f"{w:.6g}" for w in p.get("expert_weights", []) if w is not None)
            rows.append(row)
    return rows
