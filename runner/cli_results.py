"""The commands that read run folders: report, compare, junit, diff, export, merge, and
import (question sets to scenarios); runner/cli.py registers them on the group."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from runner.errors import Exit, InputError
from runner.examples import Examples, HelpGroup
from runner.outfile import STDOUT


@click.command(cls=Examples)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table",
              show_default=True, help="A text table, a markdown table (CI summaries), or JSON "
              "with every figure, failures and warnings.")  # fmt: skip
def report(run_dir: str, fmt: str) -> None:
    """Per-target counts, checks, tokens, latency and cost of a run."""
    from runner.results.reader import Skipped
    from runner.results.report import render, render_notes, render_rates
    from runner.results.stats import rows_of, summarize_run
    from runner.results.verdicts import attach, shown

    skipped = Skipped()  # lines of the run's files that are not its records
    summary, manifest = summarize_run(Path(run_dir), skipped)
    rows = rows_of(summary, manifest)
    attach(rows, summary.groups)  # each scenario × target's samples, counted as they were read
    click.echo(render(rows, fmt))
    echo_notes(render_notes(rows, fmt))
    echo_notes(render_rates(shown(summary.groups.values()), fmt))
    if skipped.count:
        click.echo(skipped.note(), err=True)


def echo_notes(notes: str, err: bool = False) -> None:
    """Failures and warnings under the table, after a blank line (nothing when none)."""
    if notes:
        click.echo("\n" + notes, err=err)


@click.command(cls=Examples)
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--html", "html_file", required=True, type=click.Path(dir_okay=False),
              help="The page to write: one self-contained HTML file ('-': stdout).")  # fmt: skip
@click.option("--max-rows", type=click.IntRange(1), default=1000, show_default=True,
              help="Rows of conversations shown (failing ones first).")  # fmt: skip
def compare(run_dirs: tuple[str, ...], html_file: str, max_rows: int) -> None:
    """A page comparing RUN_DIRS: report, charts, conversations side by side, turn by turn."""
    from runner.results.compare import write_page

    path = write_page([Path(d) for d in run_dirs], Path(html_file), max_rows)
    click.echo(f"compare page: {path}", err=html_file == STDOUT)


@click.command(cls=Examples)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The JUnit XML file to write ('-': stdout).")  # fmt: skip
def junit(run_dir: str, output: str) -> None:
    """Write the JUnit report of an existing run: a testsuite per target, a testcase per
    conversation (planned but not run: skipped, when the scenario files are still there)."""
    from runner.engine.resume import recorded_plan
    from runner.results.junit import write_junit
    from runner.results.store import read_manifest

    read_manifest(Path(run_dir))  # not a run: exit 2 before anything else
    try:
        plan = recorded_plan(Path(run_dir))
    except InputError as exc:
        click.echo("warning: not-run conversations are not listed: " + exc.problems[0], err=True)
        plan = None
    write_junit(Path(run_dir), Path(output), plan)
    click.echo(output, err=output == STDOUT)


@click.command(cls=Examples)
@click.argument("base_run", type=click.Path(exists=True, file_okay=False))
@click.argument("new_run", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text",
              show_default=True, help="Plain text, markdown (a CI comment, lists cut at 30), "
              "or JSON with everything.")  # fmt: skip
@click.option("--text", "show_text", is_flag=True, help="List every reply that changed.")
@click.option("--match", type=click.Choice(["id", "scenario"]), default="id", show_default=True,
              help="Pair conversations by id (which ends in @target), or by scenario, vars and "
              "sample: for runs of one target each that differ (another model).")  # fmt: skip
def diff(base_run: str, new_run: str, fmt: str, show_text: bool, match: str) -> None:
    """Compare NEW_RUN with BASE_RUN conversation by conversation, and gate on it.

    Exit 1 when the gate fails: a regression (pass -> fail, ok -> failed), a conversation
    missing from NEW_RUN, a new conversation that does not pass, or a NEW_RUN that did not
    complete; 0 otherwise."""
    from runner.results.diff import diff_runs, gate
    from runner.results.diffview import render_diff

    result = diff_runs(Path(base_run), Path(new_run), show_text, match)
    click.echo(render_diff(result, fmt))
    sys.exit(Exit.CHECKS if gate(result) else Exit.OK)


@click.command(cls=Examples)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", required=True,
              type=click.Choice(["openai", "sharegpt", "mtbench", "jsonl"]),
              help="openai: chat fine-tuning messages; sharegpt: conversations; mtbench: "
              "FastChat answer files; jsonl: the transcript records as they are.")  # fmt: skip
@click.option("-o", "--output", "out", required=True,
              help="File to write ('-': stdout; mtbench: a folder).")  # fmt: skip
@click.option("--only-ok", is_flag=True, help="Leave out failed conversations.")
@click.option("--only-passed", is_flag=True, help="Only conversations whose checks all passed.")
@click.option("--target", "targets", multiple=True, help="Only this target's (repeatable).")
@click.option("--split", help="NAME=FRACTION: that share (by conversation id, the same in every "
              "export) to OUT.NAME, the rest to OUT.train (validation=0.1).")  # fmt: skip
@click.option("--with-ids", is_flag=True, help="Each line carries its conversation id (`id`).")
def export(
    run_dir: str,
    fmt: str,
    out: str,
    only_ok: bool,
    only_passed: bool,
    targets: tuple[str, ...],
    split: str | None,
    with_ids: bool,
) -> None:
    """Export the newest record of each conversation of RUN_DIR as a dataset: openai
    (chat fine-tuning), sharegpt, mtbench (FastChat answer files) or jsonl (the records)."""
    from runner.results.export import Filters, parse_split
    from runner.results.export import export as write

    filters = Filters(only_ok, only_passed, targets)
    done = write(Path(run_dir), fmt, Path(out), filters, parse_split(split), with_ids)
    click.echo(done.line(), err=True)


@click.group("import", cls=HelpGroup)
def import_() -> None:
    """Turn other tools' question sets into scenario files."""


@import_.command("mtbench")
@click.argument("questions", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True,
              help="Scenario file (YAML) to write ('-': stdout).")  # fmt: skip
def import_mtbench(questions: str, out: str) -> None:
    """FastChat's MT-Bench QUESTIONS.jsonl to scenarios: one per question, its category
    a tag and its temperature, reference answers kept as metadata."""
    from runner.spec.mtbench import import_mtbench as convert

    count = convert(Path(questions), Path(out))
    click.echo(f"{count} scenarios -> {out}", err=True)


@click.command(cls=Examples)
@click.argument("run_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False))  # fmt: skip
@click.option("-o", "--output", "out", required=True, help="The merged run folder (new).")
def merge(run_dirs: tuple[str, ...], out: str) -> None:
    """Join shard runs (or any runs) into one run folder: the newest record of each
    conversation, every usage record, one manifest."""
    from runner.results.merge import merge as join

    counts = join([Path(d) for d in run_dirs], Path(out))["counts"]
    click.echo(
        f"{counts['ok'] + counts['failed']} conversations ({counts['ok']} ok, "
        f"{counts['failed']} failed) from {len(run_dirs)} runs -> {out}",
        err=True,
    )
