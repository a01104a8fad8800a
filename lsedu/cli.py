"""The ``lsedu`` command line: ``lsedu merge RECIPE.yaml``."""

from __future__ import annotations

import argparse
import sys

from .streaming import load_recipe, merge_checkpoints


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lsedu", description="Model merging tools from the lsedu book.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="merge checkpoints as a YAML recipe says, streaming tensor by tensor",
                       description="Merge a base model and its fine-tunes as RECIPE says, reading one tensor name "
                                   "at a time, and write a sharded safetensors folder.")
    m.add_argument("recipe", help="the YAML recipe (merge_method, base_model, models, parameters, output)")
    m.add_argument("-o", "--output", help="output folder (overrides the recipe's 'output')")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output folder (never an input)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    try:
        recipe = load_recipe(args.recipe)
        report = merge_checkpoints(recipe, args.output, overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"lsedu merge: error: {e}", file=sys.stderr)
        return 2
    print(f"merged {report.merged_tensors} of {report.tensors} tensors with {report.method} in "
          f"{report.seconds:.1f} s (inputs read {report.read_passes:.2f} times) "
          f"-> {report.output}")
    for p in report.masks:
        print(f"mask saved: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
