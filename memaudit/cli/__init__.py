"""The ``memaudit`` command line: a thin layer over the command packages.

One module per command (``audit``, ``demo``, ``mia``, ``extract``, ``detect``, ``index``, ``dedup``,
``report``, ``compare``, ``emm``), each mapping its options to its command's typed config and
calling the command's entry function (the one ``memaudit.api`` calls too), then printing; the
option declarations they share are in ``options``, the consoles, exit codes and one-line errors in
``common``. The commands register here, in the order ``memaudit --help`` lists them.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from memaudit import __version__, distributed, hub
from memaudit.cli import audit, compare, dedup, demo, detect, emm, extract, index, mia, report
from memaudit.cli.common import EXIT_BAD_INPUT, err_console, out_console
from memaudit.errors import MemauditError

# click's exceptions, from wherever this typer takes click (recent typers carry their own copy)
_click_errors = sys.modules[typer.BadParameter.__module__]
_NoArgsIsHelp = getattr(_click_errors, "NoArgsIsHelpError", ())


class _OneLineErrors(TyperGroup):
    """Usage mistakes (an unknown option, a missing one, a value of the wrong type) print one line
    and exit 2, as every other bad input does, instead of click's usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as error:  # the help is already printed
            sys.exit(error.exit_code)
        except _click_errors.ClickException as error:
            context = getattr(error, "ctx", None)
            hint = f" (see {context.command_path} --help)" if context is not None else ""
            err_console.print(f"memaudit: error: {error.format_message()}{hint}", markup=False, highlight=False,
                              soft_wrap=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            err_console.print("memaudit: aborted", markup=False, highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_OneLineErrors,
                  help="Audit diffusion models for memorized training images.")


def _print_version(value: bool) -> None:
    if value:
        out_console.print(f"memaudit {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print memaudit's version and exit.")) -> None:
    """Audit diffusion models for memorized training images."""


for _command in (audit.audit, demo.demo, mia.mia, extract.extract, detect.detect, index.index, dedup.dedup,
                 report.report, compare.compare, emm.emm):
    app.command()(_command)


def main() -> None:
    """The ``memaudit`` command; under torchrun each rank joins the process group first, and only
    rank 0 prints results (see README.md, "Scaling out")."""
    hub.offline_environment()  # nothing this process loads may reach the network
    if distributed.launched_by_torchrun():
        try:
            world = distributed.init_from_environment()
        except MemauditError as error:
            err_console.print(f"memaudit: error: {error}", markup=False, highlight=False, soft_wrap=True)
            raise SystemExit(EXIT_BAD_INPUT) from None
        out_console.quiet = not world.is_main
    try:
        app()
    finally:
        distributed.shutdown()
