"""`mt3 tasks [PATTERN] [--json] [--data-dir DIR] [--gin_file F] [--module_import M]`: the registered tasks and
mixtures (seqio's registry, `mt3.registry`), each with its dataset, prepared hours per split and, for mixtures, the
tasks' rates and shares. PATTERN filters by substring (`mt3 tasks local`) or glob (`mt3 tasks '*_train'`)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None,
                        help="substring or glob (* ? [) of the names to list; a mixture is listed when a task of it "
                             "matches")
    parser.add_argument("--json", action="store_true", help="print one JSON object {tasks: [...], mixtures: [...]}")
    parser.add_argument("--data-dir", default=None,
                        help="prepared data root (default: the gin files' DATA_DIR, else $MT3_DATA_DIR or "
                             "data/prepared)")
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="gin files whose MIXTURES / MIXTURE_OR_TASK_MODULE to register first (repeatable)")
    parser.add_argument("--all", action="store_true",
                        help="also list the tasks that are not prepared under the data dir (default: all tasks when a "
                             "PATTERN is given, else only prepared ones and every mixture)")
    from mt3.commands.train import add_module_import_argument

    add_module_import_argument(parser)
    parser.set_defaults(gin_bindings=[])


def _hours(value) -> str:
    """Prepared audio: '-' when not prepared, minutes under an hour (a small dataset of recordings is not '0.00 h')."""
    if value is None:
        return "-"
    return f"{value:.2f} h" if value >= 1 else f"{value * 60:.1f} min"


def format_listing(listing: dict, data_dir: str) -> str:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140, record=True)
    with console.capture() as capture:
        tasks = Table(title=f"tasks (prepared data under {data_dir})")
        for column in ("task", "kind", "dataset", "prepared hours per split"):
            tasks.add_column(column)
        for row in listing["tasks"]:
            splits = ", ".join(f"{split} {_hours(h)}" for split, h in row["splits"].items()) or "-"
            tasks.add_row(row["name"], row["kind"], row["dataset"] or "-", splits)
        if listing["tasks"]:
            console.print(tasks)
        mixtures = Table(title="mixtures (rates as seqio reads them: relative numbers of examples)")
        for column in ("mixture", "from", "task", "rate", "share", "prepared (its split)"):
            mixtures.add_column(column)
        for mix in listing["mixtures"]:
            for i, member in enumerate(mix["tasks"]):
                rate = f"{member['rate']:.4g}" + (f" (T={member['temperature']:.3g})" if member["temperature"] else "")
                mixtures.add_row(mix["name"] if i == 0 else "", mix["source"] if i == 0 else "", member["task"], rate,
                                 f"{member['share']:.3f}", _hours(member["hours"]))
        if listing["mixtures"]:
            console.print(mixtures)
    return capture.get()


def main(args: argparse.Namespace) -> int:
    from mt3 import datasets, registry
    from mt3.commands.data_stats import load_registry_from_flags

    options = load_registry_from_flags(args)
    data_dir = args.data_dir or options.get("data_dir")
    listing = registry.describe(args.pattern, data_dir=data_dir)
    if not args.pattern and not args.all:  # 100+ names: by default the tasks one can train or evaluate now
        listing["tasks"] = [t for t in listing["tasks"] if t["prepared"]]
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    if args.pattern and not listing["tasks"] and not listing["mixtures"]:
        from mt3.errors import InputError

        raise InputError(None, f"no task or mixture matches {args.pattern!r}"
                               f"{registry.did_you_mean(args.pattern, registry.names())}")
    print(format_listing(listing, datasets.resolve_data_dir(data_dir)), end="")
    return 0
