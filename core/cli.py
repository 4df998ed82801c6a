"""The command-line convention shared by gen-synth, find-direction, train-unet, eval-seg, shardset
and `python -m experiments`.

- Errors are one line, "Error: <what was wrong and what to do>", with a non-zero exit code: a
  `UserError` (core.errors) or an `OSError` (a full disk, a folder that is not writable) is caught
  here, once, at the tool's edge; click's own usage errors print without the usage block (the
  message names the option). Nothing else is caught: a bug keeps its traceback.
- `-h` and `--help`; `--version` prints the package version.
- `-v` logs at INFO, `-vv` at DEBUG; without it only warnings and errors are logged.
- Progress bars (tqdm) go to stderr and only when it is a terminal (`progress_bar`).
- Shell completion is click's: `_GEN_SYNTH_COMPLETE=bash_source gen-synth` prints the script to
  source (zsh_source, fish_source for the other shells; tests/test_cli_basics.py runs it per tool).

Use `Command` / `Group` as the click class of a tool's entry point (`@click.command(cls=Command)`,
`@click.group(cls=Group)`) and `common_options` on it; sub-commands of a `Group` are `Command`s.
A tool's settings are the fields of its config dataclass, and `config_option` declares each one:
named as the field, with the field's default.
"""
from __future__ import annotations

import dataclasses
import difflib
import errno
import logging
import os
import re
import sys
from typing import Callable

import click

from .errors import UserError, first_line
from .version import package_version

__all__ = ["Command", "Group", "USAGE_EXIT_CODE", "CONTEXT_SETTINGS", "common_options", "verbosity_option", "version_option",
           "config_option", "progress_bar", "os_error_message", "LOG_FORMAT"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_VERBOSITY_KEY = "bgw.verbosity"  # ctx.meta: the highest -v count given on the command line so far


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: the file it names and the system's reason."""
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing {exc.filename or 'the output'}: free some space and run again"
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or first_line(exc)}; check the path and its permissions"


class _OneLineErrors:
    """Mixin for click.Command / click.Group: runs the command, prints a UserError, an OSError or a
    click error as one line, and exits. `interrupted` names what a Ctrl-C leaves behind."""

    leave_at_once_after_interrupt = False  # after Ctrl-C, exit without the interpreter's teardown

    def interrupted(self, args: list[str]) -> str | None:
        """The message printed on Ctrl-C (exit code 130); None: click's "Aborted!" (exit code 1)."""
        return None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # a caller (experiments' runner, a test) handles the errors itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if isinstance(exc, click.UsageError):
                exc.ctx = None  # the message already says what to change; no usage block
                better = _explain(exc, argv)
                if better:
                    click.echo(f"Error: {better}", err=True)
                    sys.exit(exc.exit_code)
            exc.show()
            sys.exit(exc.exit_code)
        except UserError as exc:
            click.echo(f"Error: {first_line(exc)}", err=True)
            # a name or value chosen from a list is a usage error, whichever layer found it
            sys.exit(getattr(exc, "exit_code", 1))
        except OSError as exc:
            click.echo(f"Error: {os_error_message(exc)}", err=True)
            sys.exit(1)
        except click.exceptions.Abort:  # Ctrl-C
            message = self.interrupted(argv)
            click.echo(message or "Aborted!", err=True)
            code = 130 if message else 1
            if args is None and self.leave_at_once_after_interrupt:
                # a tool's own process (a caller passes args): everything is closed by now, and the
                # interpreter's teardown can hang in a framework's native threads after an interrupt
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            sys.exit(code)
        sys.exit(rv if isinstance(rv, int) else 0)


USAGE_EXIT_CODE = 2  # click's, for every tool: a bad option, a missing one, a name not in a list


def _given(flags: list[str], argv: list[str]) -> list[str]:
    """The values `argv` gives an option (`--x v` or `--x=v`)."""
    out = []
    for i, tok in enumerate(argv):
        if tok in flags and i + 1 < len(argv):
            out.append(argv[i + 1])
        out += [tok.split("=", 1)[1] for f in flags if tok.startswith(f + "=")]
    return out


def _explain(exc: click.UsageError, argv: list[str]) -> str | None:
    """A better one-line message where click only names the option: a missing option says what goes
    there (its help), a value not among the choices gets the close ones. None: click's is fine."""
    param = getattr(exc, "param", None)
    if param is None or not isinstance(param, click.Option):
        return None
    flag = max(param.opts, key=len)
    if isinstance(exc, click.MissingParameter):
        what = re.split(r"\.\s+(?=[A-Z\[])", param.help or "")[0].strip().rstrip(".")  # its first sentence
        return f"missing {flag}" + (f": {what[0].lower() + what[1:]}" if what else "")
    if isinstance(exc, click.BadParameter) and isinstance(param.type, click.Choice):
        choices = [str(c) for c in param.type.choices]
        close = [m for v in _given(param.opts, argv) if v not in choices
                 for m in difflib.get_close_matches(v, choices, n=3)]
        if close:
            return f"{exc.format_message()} (did you mean {', '.join(dict.fromkeys(close))}?)"
    return None


class Command(_OneLineErrors, click.Command):
    """A click command under the convention (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)


class Group(_OneLineErrors, click.Group):
    """A click group under the convention; its errors, and its sub-commands', print as one line."""

    command_class = Command

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)


def _set_verbosity(fmt: str) -> Callable:
    def callback(ctx: click.Context, param: click.Parameter, value: int) -> int:
        # a group's -v carries over to its sub-command (`gen-synth -v embed ...`)
        count = max(int(value or 0), ctx.meta.get(_VERBOSITY_KEY, 0))
        ctx.meta[_VERBOSITY_KEY] = count
        level = logging.WARNING if count == 0 else logging.INFO if count == 1 else logging.DEBUG
        logging.basicConfig(level=level, format=fmt)
        logging.getLogger().setLevel(level)
        return count
    return callback


def verbosity_option(fmt: str = LOG_FORMAT, expose_value: bool = False) -> Callable:
    """-v / -vv: logging at INFO / DEBUG (default WARNING), set as soon as the option is parsed."""
    return click.option("-v", "--verbose", "verbose", count=True, is_eager=True, expose_value=expose_value,
                        callback=_set_verbosity(fmt), help="-v: info logs, -vv: debug logs.")


def version_option() -> Callable:
    """--version: the package version (the same for every tool of the package)."""
    return click.version_option(package_version(), "--version", message="%(prog)s (bgw-seg) %(version)s")


def common_options(fmt: str = LOG_FORMAT, expose_verbosity: bool = False) -> Callable:
    """-v/-vv and --version on a tool's entry point (-h/--help come with Command/Group)."""
    def deco(f):
        return version_option()(verbosity_option(fmt, expose_verbosity)(f))
    return deco


def config_option(config: type, name: str, flag: str | None = None, **kwargs) -> Callable:
    """A click option that sets field `name` of the dataclass `config`: the parameter is named as the
    field (so a command builds its config from the options as they come, and experiments' runner
    finds the flag of a recipe key by introspection), its default is the field's (the dataclass is
    the one place defaults live), and its flag is `flag`, else the field's metadata "flag", else
    --name-with-dashes."""
    field = config.__dataclass_fields__[name]
    default = field.default
    if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    # click counts an explicit default, None included, as a value: a required option gets none (so
    # that it can be missing), an on/off pair keeps None (neither given: the config derives it)
    if default is not dataclasses.MISSING and not (default is None and kwargs.get("required")):
        kwargs.setdefault("default", default)
        if default is not None and not kwargs.get("is_flag"):
            kwargs.setdefault("show_default", True)
    return click.option(flag or field.metadata.get("flag", "--" + name.replace("_", "-")), name, **kwargs)


def progress_bar(**kwargs):
    """A tqdm bar on stderr; disable=None hides it when stderr is not a terminal (logs, CI), so
    they get no carriage-return frames."""
    from tqdm import tqdm

    kwargs.setdefault("disable", None)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(**kwargs)
