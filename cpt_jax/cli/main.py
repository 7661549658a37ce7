"""`cpt-jax`: one entry point, one module per subcommand (cpt_jax/cli/<name>.py)."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from cpt_jax.errors import UserError

FILESYSTEM_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)

# name -> module; each module has add_arguments(parser) and run(args) -> int, and its docstring's
# first line is the help text. Modules are imported lazily so `--help` stays fast.
COMMANDS = {
    "train": "cpt_jax.cli.train",
    "prepare": "cpt_jax.cli.prepare",
    "import-hf": "cpt_jax.cli.import_hf",
    "export-hf": "cpt_jax.cli.export_hf",
    "merge": "cpt_jax.cli.merge",
    "extend-vocab": "cpt_jax.cli.extend_vocab",
    "schedule": "cpt_jax.cli.schedule",
    "eval": "cpt_jax.cli.eval",
    "report": "cpt_jax.cli.report",
    "estimate": "cpt_jax.cli.estimate",
    "launch": "cpt_jax.cli.launch",
    "fit-mixture": "cpt_jax.cli.fit_mixture",
    "demo": "cpt_jax.cli.demo",
}


def _help_line(module_name: str) -> str:
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return "(not available)"
    import ast
    doc = ast.get_docstring(ast.parse(open(spec.origin).read())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpt-jax", description="Continual pre-training of decoder LLMs in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        help_line = _help_line(module_name)
        p = sub.add_parser(name, help=help_line, description=help_line)
        p.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the command name first, then let its module add its own arguments.
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
    module = importlib.import_module(COMMANDS[argv[0]])
    sub_parser = argparse.ArgumentParser(prog=f"cpt-jax {argv[0]}", description=(module.__doc__ or "").strip(),
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(sub_parser)
    # Intermixed: `key=value` overrides may come before or after flags.
    args = sub_parser.parse_intermixed_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UserError as e:  # the library's one error hierarchy: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the filesystem refused a write: a user's problem, not a bug
        if e.errno not in FILESYSTEM_ERRORS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror}{where}; free disk space or choose a writable folder, then rerun", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.exit(main())


if __name__ == "__main__":
    entry()
