"""``--help`` at 80 columns: every command's help fits, and shows each option and its choices whole."""

from __future__ import annotations

import pytest
import typer
from templ_runs import run_templ, templ_env

from templ_pipeline.cli import app


def _commands(command, path=()):
    """(words after ``templ``, click command) for the root and every command and group under it."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def _help(words: tuple[str, ...]) -> str:
    done = run_templ(*words, "--help", timeout=120, env=templ_env(COLUMNS="80"))
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(("words", "command"), COMMANDS, ids=[" ".join(("templ", *w)) for w, _ in COMMANDS])
def test_help_at_80_columns_fits_and_shows_every_option_whole(words, command):
    text = _help(words)
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert not too_wide, too_wide
    ctx = command.make_context("templ", [], resilient_parsing=True)
    for param in command.get_params(ctx):
        for name in (*param.opts, *param.secondary_opts):
            assert name in text.split() or f"{name}," in text.split(), (name, text)
        record = param.get_help_record(ctx)
        if record is not None:  # the option's names with its value: "--log-level <debug|info|warning|error>"
            assert record[0] in text, (record[0], text)
    assert "<bool>" not in text and "…" not in text


def test_choices_of_a_long_vocabulary_are_shown_whole():
    text = _help(("select-best",))
    assert "--log-level <debug|info|warning|error>" in text
    assert "--use-input-conformers" in _help(("screen",))


def test_the_help_keeps_the_options_in_their_sections():
    sections = [line for line in _help(("select-best",)).splitlines() if line and not line.startswith(" ")]
    assert [line for line in sections if line.endswith(":")] == [
        "Options:", "Query preparation:", "Template choice:", "Telemetry:"]
