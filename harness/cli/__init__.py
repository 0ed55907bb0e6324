"""The `harness` command line: one module per subcommand (`cmd_*`), each with its parser and its
handler side by side, listed once in COMMANDS. Bad input anywhere is one line naming the flag and
the fix, and exit code 2 (`main` turns every refusal into that line)."""

from __future__ import annotations

import sys

from harness.cli import (
    cmd_bench,
    cmd_check,
    cmd_hosts,
    cmd_limits,
    cmd_proof,
    cmd_report,
    cmd_run,
    cmd_serve,
    cmd_sweep,
    cmd_tour,
    cmd_tune,
    cmd_ui,
    cmd_worker,
)
from harness.cli.common import OneLineErrorParser
from harness.core.refusal import Refused

COMMANDS = (cmd_proof.COMMAND, cmd_run.COMMAND, cmd_limits.COMMAND, cmd_hosts.COMMAND, cmd_tune.COMMAND,
            cmd_worker.COMMAND, cmd_serve.COMMAND, cmd_check.COMMAND, cmd_sweep.COMMAND, cmd_report.REPORT,
            cmd_report.COMPARE, cmd_tour.COMMAND, cmd_ui.COMMAND, cmd_bench.COMMAND)


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="harness", description="Connections per port are capped by file descriptors and "
                                "memory, not by 65,535 port numbers: prove it here.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    prog = " ".join(["harness", args.command, *([args.kind] if getattr(args, "kind", None) else []),
                     *([args.action] if getattr(args, "action", None) else [])])
    if extra:  # said by the subcommand that does not take them, not by `harness`
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)} ({prog} does not take them; "
              f"see {prog} --help)", file=sys.stderr)
        return 2
    try:
        return next(c for c in COMMANDS if c.name == args.command).run(args)
    except Refused as exc:  # each says what was wrong and the fix, in one line
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
