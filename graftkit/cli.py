"""The ``graftkit`` command line: run, eval, compare, generate, embed, label, plan, synth, study,
export, plugins.

Every error caused by the user's input or environment (an unknown registered name, an invalid
config, a bad or missing file, a folder that cannot be written, a full or failing disk, a run
folder another process holds, a refused or damaged checkpoint, a loss that diverged) is printed
as one line naming the file or value, with exit code 2. A traceback means a bug; ``--debug`` (or
``GRAFTKIT_DEBUG=1``) shows the traceback for any error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from graftkit import __version__
from graftkit.errors import EXIT_USAGE, CLIError, one_line, storage_error

__all__ = ["EXIT_USAGE", "CLIError", "build_parser", "main"]


def _add_common_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile", help="registered run preset / launch profile (see `graftkit plugins`)"
    )
    p.add_argument("--config", type=Path, help="YAML config (e.g. a run's resolved config.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set phases.p3.lr=1e-5 (repeatable)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print every setting once with where it came from (paper.yaml, profile, --config, "
        "a flag, --set, default) and exit",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graftkit",
        description="Graft a frozen self-supervised encoder into a decoder LLM (four-phase curriculum).",
    )
    parser.add_argument("--version", action="version", version=f"graftkit {__version__}")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars or lines (results still print)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of any error (GRAFTKIT_DEBUG=1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: OMP_NUM_THREADS if set, else torch's default)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars or lines (results still print)",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    common.add_argument(
        "--threads", type=int, metavar="N", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )

    p = sub.add_parser(
        "run", parents=[common], help="run curriculum phases on a dataset, then evaluate"
    )
    p.add_argument("dataset", help="registered dataset name, e.g. ct_rate")
    p.add_argument(
        "--phases", default=None, help="phase range: 1-4, 3, 2-3 (default: every declared phase)"
    )
    p.add_argument("--output-dir", type=Path, help="run directory (default runs/DATASET-PROFILE)")
    p.add_argument(
        "--data-dir", type=Path, help="real data in the dataset's layout (default: synthesise)"
    )
    p.add_argument(
        "--llm", type=Path, help="local causal-LM directory (default: train the language prior)"
    )
    p.add_argument(
        "--init-from", type=Path, help="checkpoint to start the first selected phase from"
    )
    p.add_argument(
        "--warm-bridge",
        type=Path,
        help="phase-3 run or checkpoint whose bridge parts warm-start phase 3",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run from its last complete checkpoint (same config only)",
    )
    p.add_argument(
        "--allow-config-change",
        nargs="+",
        default=[],
        metavar="KEY",
        help="with --resume: config keys that may differ from the run's (only eval.* and "
        "data.num_workers; a trailing .* covers a section); recorded in history.jsonl",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    _add_common_run_options(p)

    p = sub.add_parser(
        "eval", parents=[common], help="evaluate a run: generation F1, ablations, report"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", default=None, help="split to evaluate (default from config: valid)")
    p.add_argument("--extractor", help="registered label extractor (default: the dataset's)")
    p.add_argument(
        "--ablations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="real/zero/shuffle/random tokens, NLL split, linear probes",
    )
    p.add_argument("--limit", type=int, help="evaluate the first N volumes only")
    p.add_argument(
        "--checkpoint", help="phase checkpoint to evaluate (default: the last phase run)"
    )
    p.add_argument(
        "--tokens",
        choices=("real", "oracle"),
        default="real",
        help="visual tokens to generate from: the compressor's (real) or tokens built from the "
        "true labels (a diagnostic of how the decoder reads tokens it was not trained on; not a "
        "ceiling)",
    )
    p.add_argument(
        "--name",
        help="write to RUN/eval/NAME (default: the run directory for the run's own evaluation, "
        "RUN/eval/<what differs> for any other)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing RUN/eval/NAME evaluation"
    )

    p = sub.add_parser(
        "compare",
        parents=[common],
        help="paired comparison of two evaluations of the same volumes (macro F1, CRG, ROUGE-L)",
    )
    p.add_argument("run_a", type=Path, help="run folder or evaluation folder (RUN/eval/NAME)")
    p.add_argument("run_b", type=Path, help="the other one, evaluated on the same volumes")
    p.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples")
    p.add_argument("--permutations", type=int, default=10_000, help="paired permutation-test draws")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("generate", parents=[common], help="write one report for one case")
    p.add_argument("run_dir", type=Path)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--embeddings", type=Path, help="slice embeddings (.npy or .npz)")
    src.add_argument("--volume", type=Path, help="a volume to embed first (needs --encoder)")
    p.add_argument("--encoder", help="registered encoder name, with --volume")
    p.add_argument("--weights", type=Path, help="encoder weights, with --volume")
    p.add_argument(
        "--explain", action="store_true", help="per sentence, the zones it relied on most"
    )
    p.add_argument(
        "--greedy", action="store_true", help="greedy decoding instead of the eval protocol"
    )

    p = sub.add_parser(
        "embed", parents=[common], help="turn volumes into per-slice embeddings with an encoder"
    )
    p.add_argument("encoder", help="registered encoder name, e.g. lejepa-ct")
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        type=Path,
        help="files, or folders searched for the encoder's inputs",
    )
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--weights", type=Path)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int)
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip complete outputs (default on)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="encoder option, reader settings included (e.g. dtype=bfloat16); the encoder's "
        "documentation lists them",
    )

    p = sub.add_parser(
        "label", parents=[common], help="extract the label columns from report texts"
    )
    p.add_argument(
        "--extractor", required=True, help="registered label extractor, e.g. ct_rate-rules"
    )
    p.add_argument(
        "--input", required=True, type=Path, help="CSV with an id column and a text column"
    )
    p.add_argument("--text-column", required=True)
    p.add_argument("--id-column", help="default: the first column")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extractor option, e.g. model_dir=PATH for ct_rate-radbert",
    )

    p = sub.add_parser(
        "plan", parents=[common], help="inventory per phase on the meta device (no weights)"
    )
    p.add_argument("dataset")
    p.add_argument("--json", action="store_true")
    _add_common_run_options(p)

    p = sub.add_parser(
        "synth", parents=[common], help="write a synthetic cohort in the dataset's own layout"
    )
    p.add_argument("dataset")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-valid", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--seed", type=int)

    p = sub.add_parser(
        "study", parents=[common], help="the paper's key comparisons on the synthetic cohort"
    )
    p.add_argument("dataset")
    p.add_argument(
        "--output",
        type=Path,
        help="markdown report (default: runs/study-DATASET-PROFILE/reproduction.md)",
    )
    _add_common_run_options(p)

    p = sub.add_parser(
        "export", parents=[common], help="a finished run as a Hub-ready folder with a model card"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--output", required=True, type=Path, help="the folder to write (must be new)")
    p.add_argument(
        "--checkpoint", help="phase checkpoint to export (default: the last complete phase)"
    )
    p.add_argument(
        "--license", help="the card's licence id (default: the dataset's, e.g. cc-by-nc-sa-4.0)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")

    p = sub.add_parser(
        "plugins",
        parents=[common],
        help="list installed plugins: distribution, where loaded from, hooks, names provided",
    )
    p.add_argument("--json", action="store_true")
    return parser


def cmd_plugins(args: argparse.Namespace) -> int:
    from graftkit.plugins import describe

    info = describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="graftkit plugins")
    for col in ("plugin", "version", "distribution", "loaded from", "hooks", "provides"):
        table.add_column(col)
    for row in info:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in row["provides"].items())
        distribution = row["distribution"] + "".join(
            f"\n(also declared by {o['distribution']} {o['version']}: not loaded)"
            for o in row["shadows"]
        )
        table.add_row(
            row["name"],
            row["version"],
            distribution,
            row["location"],
            ", ".join(row["hooks"]),
            provides,
        )
    # a file or a pipe gets the whole table, not one cut at 80 columns
    Console(width=None if sys.stdout.isatty() else 10_000).print(table)
    return 0  # a name declared twice was also warned about on stderr when the plugins loaded


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    def call(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return call


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "plugins": cmd_plugins,
    "run": _lazy("graftkit.commands", "cmd_run"),
    "eval": _lazy("graftkit.commands", "cmd_eval"),
    "compare": _lazy("graftkit.commands", "cmd_compare"),
    "generate": _lazy("graftkit.commands", "cmd_generate"),
    "embed": _lazy("graftkit.commands", "cmd_embed"),
    "label": _lazy("graftkit.commands", "cmd_label"),
    "plan": _lazy("graftkit.commands", "cmd_plan"),
    "synth": _lazy("graftkit.commands", "cmd_synth"),
    "study": _lazy("graftkit.commands", "cmd_study"),
    "export": _lazy("graftkit.commands", "cmd_export"),
}


def set_threads(threads: int | None) -> str:
    """Apply ``--threads`` to torch (through ``OMP_NUM_THREADS`` when torch is not imported yet,
    so an error path stays fast); returns where the thread count comes from.

    torch's default is one thread per core, which on a machine shared with other processes can
    be many times slower than one thread (docs/ct-rate.md, "Threads").
    """
    if threads is not None:
        if threads < 1:
            raise CLIError(f"--threads {threads}: must be at least 1")
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        return "--threads"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return "OMP_NUM_THREADS"
    return "torch default"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input or environment, not a bug.

    Types of modules that were never imported cannot have been raised, so they are not imported
    here (that would load torch on every usage error).
    """
    from graftkit.config import ConfigError
    from graftkit.plugins import PluginError, UnknownNameError
    from graftkit.rundir import RunDirError

    errors: list[type[BaseException]] = [
        CLIError,
        ConfigError,
        UnknownNameError,
        PluginError,
        RunDirError,
        OSError,  # StorageError (a full, read-only or failing disk) is one
        # a loss that became NaN/Inf: training diverged (a rate too high for the data), not a bug
        FloatingPointError,
    ]
    for module, name in (
        ("graftkit.data", "DataError"),
        ("graftkit.checkpoint", "CheckpointError"),
    ):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    from graftkit.progress import set_quiet

    args = build_parser().parse_args(argv)
    set_quiet(args.quiet)
    debug = args.debug or os.environ.get("GRAFTKIT_DEBUG", "") not in ("", "0")
    try:
        args.threads_source = set_threads(args.threads)
        return COMMANDS[args.verb](args)
    except user_errors() as err:
        if debug:
            raise
        print(f"graftkit {args.verb}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        # a storage fault raised where no writer named its file (a library's own error type)
        fault = storage_error(err, None)
        if fault is None or debug:
            raise
        print(f"graftkit {args.verb}: error: {one_line(fault)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
