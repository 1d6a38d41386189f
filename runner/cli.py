"""The command line: parse, call the modules that do the work, map errors to exit codes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

import runner
from runner.errors import Exit, InputError

if TYPE_CHECKING:
    from runner.run import Finished


class Group(click.Group):
    """Bad input of any kind ends with one paragraph on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo("error: " + "\n  ".join(exc.problems), err=True)
            sys.exit(Exit.INPUT)


@click.group(cls=Group)
@click.version_option(runner.__version__, prog_name="dialogue-runner")
def main() -> None:
    """Run scripted multi-turn conversations with LLM APIs in bulk."""


@main.command()
@click.argument("paths", nargs=-1, required=True)
def validate(paths: tuple[str, ...]) -> None:
    """Check scenario files (file, line and problem for each error); send nothing."""
    from runner.scenarios import load_paths

    scenarios = load_paths(list(paths))
    click.echo(f"{len(scenarios)} scenarios OK")


@main.command()
@click.argument("paths", nargs=-1)
@click.option(
    "-m", "--model", "targets", multiple=True, help="Target name, built-in, or PROVIDER:MODEL."
)
@click.option("--models", "models_file", help="Models file (default ./models.yaml when present).")
@click.option("--base-url", help="Base URL for PROVIDER:MODEL targets.")
@click.option("-o", "--output-dir", default="outputs", show_default=True)
@click.option("--run-id", help="Run folder name (default: time-based).")
@click.option("-c", "--concurrency", type=click.IntRange(1), default=16, show_default=True,
              help="Conversations in flight.")  # fmt: skip
@click.option("--repeat", type=click.IntRange(1), help="Samples of each conversation per target.")
@click.option("-k", "--filter", "filters", multiple=True, help="Scenario id glob or tag:NAME.")
@click.option("--shard", help="Run only shard K of N (K/N).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), help="Continue RUN_DIR.")
@click.option("--retry-failed", is_flag=True, help="With --resume: run failed conversations again.")
@click.option("--force", is_flag=True, help="With --resume: accept changed scenario files.")
@click.option("--stream/--no-stream", default=False, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per attempt.")
@click.option("--max-retries", type=click.IntRange(0), help="Retries per request.")
@click.option(
    "--max-wait", type=click.FloatRange(0), help="Cap in seconds on any one backoff wait."
)
@click.option("--no-progress", is_flag=True)
@click.option(
    "--dry-run", is_flag=True, help="Print each conversation's first request; send nothing."
)
def run(
    paths: tuple[str, ...],
    targets: tuple[str, ...],
    models_file: str | None,
    base_url: str | None,
    output_dir: str,
    run_id: str | None,
    concurrency: int,
    repeat: int | None,
    filters: tuple[str, ...],
    shard: str | None,
    resume_dir: str | None,
    retry_failed: bool,
    force: bool,
    stream: bool,
    timeout: float | None,
    max_retries: int | None,
    max_wait: float | None,
    no_progress: bool,
    dry_run: bool,
) -> None:
    """Run SCENARIOS (files or folders) against every -m target."""
    from runner import run as runs

    if resume_dir:
        _finished(runs.resume(Path(resume_dir), retry_failed, force, not no_progress))
    if not paths or not targets:
        raise InputError(
            "give scenario files or folders and at least one -m TARGET (or --resume RUN_DIR)"
        )
    inv = runs.Invocation(
        paths=list(paths),
        targets=list(targets),
        models_file=runs.default_models_file(models_file),
        base_url=base_url,
        repeat=repeat,
        filters=list(filters),
        shard=shard,
        stream=stream,
        concurrency=concurrency,
        timeout_s=timeout,
        max_retries=max_retries,
        max_wait_s=max_wait,
    )
    if dry_run:
        for text in runs.dry_run(runs.load(inv)[2], inv.stream):
            click.echo(text)
        return
    _finished(runs.start(inv, runs.new_run_dir(output_dir, run_id), not no_progress))


def _finished(finished: Finished) -> NoReturn:
    """The end-of-run table on stdout, one line on stderr, and the run's exit code."""
    from runner.report import render

    click.echo(render(finished.rows))
    click.echo("\n" + finished.line(), err=True)
    sys.exit(finished.exit_code)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table")
def report(run_dir: str, fmt: str) -> None:
    """Per-target counts, checks, tokens, latency and cost of a run."""
    from runner.report import render
    from runner.stats import summarize_run

    summary, manifest = summarize_run(Path(run_dir))
    prices = {t["name"]: t.get("price") for t in manifest.get("targets", [])}
    click.echo(render(summary.rows(prices), fmt))


@main.command("mock-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="0 picks a free port and prints it.")  # fmt: skip
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0)
@click.option("--jitter-ms", type=click.FloatRange(0), default=0.0)
@click.option("--seed", type=int, default=0)
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0, help="429/500/503 mix.")
@click.option("--cut-rate", type=click.FloatRange(0, 1), default=0.0, help="Streams cut midway.")
@click.option("--malformed-rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--slow-rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--slow-ms", type=click.FloatRange(0), default=2000.0)
@click.option("--retry-after-ms", type=click.IntRange(0), default=50)
@click.option("--limit-rps", type=click.FloatRange(0), default=0.0, help="Requests a second.")
@click.option("--limit-burst", type=click.FloatRange(0), default=0.0,
              help="Requests bucket size (default: one second's worth).")  # fmt: skip
@click.option("--limit-tps", type=click.FloatRange(0), default=0.0, help="Tokens a second.")
@click.option("--limit-concurrency", type=click.IntRange(0), default=0,
              help="Requests in progress at once; past it, 429.")  # fmt: skip
@click.option("--require-key", envvar="MOCK_REQUIRE_KEY",
              help="Answer 401 unless this key is sent (or set MOCK_REQUIRE_KEY).")  # fmt: skip
def mock_server(host: str, port: int, **opts: Any) -> None:
    """Serve the mock OpenAI Chat, Responses and Gemini APIs on HOST:PORT."""
    from runner.mock import MockOptions, serve

    serve(MockOptions(**opts), host, port)
