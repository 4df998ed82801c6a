"""core.cli, the convention every tool follows: one-line errors at the edge, -v/-vv, --version,
-h, options declared from a config dataclass; and the five tools' help screens follow it."""
from __future__ import annotations

import dataclasses
import errno
import logging

import click
import pytest
from click.testing import CliRunner

from core.cli import Command, Group, common_options, config_option, os_error_message
from core.errors import UserError, first_line
from core.version import package_version


class _Oops(UserError):
    pass


def _tool(raise_what):
    @click.command(cls=Command)
    @click.option("--n", type=int, default=1)
    @common_options()
    def tool(n):
        """A tool."""
        if raise_what is not None:
            raise raise_what
        click.echo(f"n={n} level={logging.getLogger().level}")

    return tool


@pytest.mark.parametrize("exc, line", [
    (_Oops("the set is gone; run gen-synth again\nsecond line"), "Error: the set is gone; run gen-synth again"),
    (OSError(errno.EACCES, "Permission denied", "/ro/x"), "Error: /ro/x: Permission denied; check the path and its permissions"),
    (OSError(errno.ENOSPC, "No space left on device", "/full/x"), "Error: disk full while writing /full/x: free some space and run again"),
])
def test_a_user_error_or_os_error_is_one_line_and_exit_1(exc, line):
    res = CliRunner().invoke(_tool(exc), [])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [line]


def test_a_bug_keeps_its_traceback():
    res = CliRunner().invoke(_tool(KeyError("bug")), [])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)


def test_a_usage_error_has_no_usage_block():
    res = CliRunner().invoke(_tool(None), ["--n", "x"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["Error: Invalid value for '--n': 'x' is not a valid integer."]


@pytest.mark.parametrize("args, level", [([], logging.WARNING), (["-v"], logging.INFO), (["-vv"], logging.DEBUG)])
def test_v_counts(args, level):
    res = CliRunner().invoke(_tool(None), args)
    assert res.exit_code == 0 and f"level={level}" in res.output


def test_version_and_h():
    res = CliRunner().invoke(_tool(None), ["--version"])
    assert res.exit_code == 0 and res.output.strip().endswith(f"(bgw-seg) {package_version()}")
    assert CliRunner().invoke(_tool(None), ["-h"]).output.startswith("Usage:")


def test_a_groups_v_carries_over_to_its_sub_command():
    @click.group(cls=Group)
    @common_options()
    def tool():
        pass

    @tool.command()
    def sub():
        click.echo(f"level={logging.getLogger().level}")

    assert "level=20" in CliRunner().invoke(tool, ["-v", "sub"]).output


def test_first_line():
    assert first_line(ValueError("a\nb")) == "a"
    assert first_line(ValueError()) == "ValueError"


def test_os_error_message_without_a_file_name():
    assert os_error_message(OSError(errno.EIO, "I/O error")) == "I/O error; check the path and its permissions"


@dataclasses.dataclass(frozen=True)
class _Config:
    name: str  # no default: required
    size: int = 128
    shards: tuple = ()
    switch: bool | None = None  # derived when neither flag is given
    out: str | None = None
    batch: int = dataclasses.field(default=95, metadata={"flag": "--batch-size"})


def _config_tool():
    @click.command(cls=Command)
    @config_option(_Config, "name", required=True)
    @config_option(_Config, "size", type=int)
    @config_option(_Config, "shards", "--shard", multiple=True)
    @config_option(_Config, "switch", "--switch/--no-switch")
    @config_option(_Config, "out", required=True)
    @config_option(_Config, "batch", type=int)
    def tool(**fields):
        click.echo(repr(_Config(**fields)))

    return tool


def test_config_option_takes_name_default_and_flag_from_the_field():
    res = CliRunner().invoke(_config_tool(), ["--name", "a", "--out", "o"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "_Config(name='a', size=128, shards=(), switch=None, out='o', batch=95)"
    res = CliRunner().invoke(_config_tool(), ["--name", "a", "--out", "o", "--no-switch", "--batch-size", "3",
                                              "--shard", "x", "--shard", "y"])
    assert "switch=False" in res.output and "batch=3" in res.output and "shards=('x', 'y')" in res.output
    assert "[default: 128]" in CliRunner().invoke(_config_tool(), ["-h"]).output


def test_config_option_keeps_a_required_option_without_a_default_missing():
    res = CliRunner().invoke(_config_tool(), ["--name", "a"])
    assert res.exit_code == 2 and res.output.startswith("Error: missing --out")


@pytest.mark.parametrize("entry", ["generator.cli:main", "finder.cli:main", "trainer.cli:main",
                                   "evaluator.cli:main", "shardset.cli:cli", "experiments.__main__:cli"])
def test_every_tool_follows_the_convention(entry):
    """-h, --version and -v on every tool; no --batch, no --num-workers or --worker-index."""
    import importlib

    module, attr = entry.split(":")
    cmd = getattr(importlib.import_module(module), attr)
    res = CliRunner().invoke(cmd, ["-h"])
    assert res.exit_code == 0 and "-v, --verbose" in res.output and "--version" in res.output
    commands = [cmd] + list(getattr(cmd, "commands", {}).values())
    flags = {o for c in commands for p in c.params for o in p.opts + p.secondary_opts}
    assert not flags & {"--batch", "--num-workers", "--worker-index"}, flags
    assert CliRunner().invoke(cmd, ["--version"]).output.strip().endswith(package_version())


def _chooser():
    @click.command(cls=Command)
    @click.option("--rule", type=click.Choice(["lighting", "mean"]), default="lighting")
    @click.option("--out", required=True, help="Folder the results go to. Created when missing.")
    def tool(rule, out):
        """A tool with a choice and a required option."""

    return tool


def test_a_value_not_in_the_choices_gets_the_close_ones_and_exit_2():
    res = CliRunner().invoke(_chooser(), ["--out", "o", "--rule", "lightnig"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "Error: Invalid value for '--rule': 'lightnig' is not one of 'lighting', 'mean'. (did you mean lighting?)"]
    res = CliRunner().invoke(_chooser(), ["--out", "o", "--rule=xyz"])
    assert res.exit_code == 2 and "did you mean" not in res.output  # nothing close: the choices say it


def test_a_missing_option_says_what_goes_there():
    res = CliRunner().invoke(_chooser(), [])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["Error: missing --out: folder the results go to"]


def test_a_user_error_may_declare_itself_a_usage_error():
    class _UnknownName(UserError):
        exit_code = 2

    res = CliRunner().invoke(_tool(_UnknownName("unknown dataset 'ecsd' (did you mean ecssd?)")), [])
    assert res.exit_code == 2 and res.output.strip() == "Error: unknown dataset 'ecsd' (did you mean ecssd?)"
