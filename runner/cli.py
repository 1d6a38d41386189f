"""The command line: parse, call the modules that do the work, map errors to exit codes."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

import runner
from runner import cli_results
from runner.cli_options import Number, batch_options, executor_options, mock_number
from runner.cli_results import echo_notes
from runner.errors import Exit, InputError, WriteError
from runner.examples import HelpGroup
from runner.outfile import STDOUT
from runner.spec.ranges import (
    IN_FLIGHT,
    REPEAT,
    RETRIES,
    SECONDS,
    SECONDS_OR_OFF,
    USD,
)

if TYPE_CHECKING:
    from runner.engine.resume import Given
    from runner.engine.run import Finished, Invocation


class Group(HelpGroup):
    """Bad input of any kind ends with one paragraph on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo("error: " + "\n  ".join(exc.problems), err=True)
            sys.exit(Exit.INPUT)
        except WriteError as exc:
            click.echo(f"error: results could not be written: {exc}", err=True)
            sys.exit(Exit.WRITE)
        except BrokenPipeError:
            closed_pipe()


def closed_pipe() -> NoReturn:
    """The reader of stdout went away (`| head`): end quietly, as a Unix tool killed by
    SIGPIPE does (exit 141), with stdout pointed at /dev/null so that flushing what is left
    at exit cannot complain again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(Exit.CLOSED_PIPE)


NO_CACHE = ""  # Invocation.cache of --no-cache (None: the models file's `cache:`)
NOTHING_TO_RUN = "give scenario files or folders and at least one -m TARGET (or --resume RUN_DIR)"


@click.group(cls=Group)
@click.version_option(runner.__version__, prog_name="dialogue-runner")
def main() -> None:
    """Run scripted multi-turn conversations with LLM APIs in bulk."""


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--models", "models_file", help="Models file (default ./models.yaml when present).")
@click.option("--judge", help="The judge target `run --judge` will get: without it, a judge "
              "check that names no target is an error, as it is for `run`.")  # fmt: skip
def validate(paths: tuple[str, ...], models_file: str | None, judge: str | None) -> None:
    """Check scenario files and the models file (file, line and problem for each error), as
    `run` does before it sends anything; send nothing."""
    from runner.engine.judge import judge_names
    from runner.engine.run import default_models_file, simulator_problems
    from runner.spec.scenarios import load_paths
    from runner.spec.targets import load_models

    problems, models_file, scenarios = [], default_models_file(models_file), []
    try:
        scenarios = load_paths(list(paths))
        judge_names(scenarios, judge)
    except InputError as exc:
        problems += exc.problems
    try:
        targets = load_models(models_file) if models_file else {}
        problems += simulator_problems(scenarios, targets)
    except InputError as exc:
        problems += exc.problems
    if problems:
        raise InputError(problems)
    click.echo(
        f"{len(scenarios)} scenarios OK" + (f", {len(targets)} targets OK" if models_file else "")
    )


@main.command()
@click.argument("paths", nargs=-1)
@click.option(
    "-m", "--model", "targets", multiple=True, help="Target name, built-in, or PROVIDER:MODEL."
)
@click.option("--models", "models_file", help="Models file (default ./models.yaml when present).")
@click.option("--base-url", help="Base URL for PROVIDER:MODEL targets.")
@click.option("-o", "--output-dir", default="outputs", show_default=True,
              help="Folder the run's folder is made in.")  # fmt: skip
@click.option("--run-id", help="Run folder name (default: time-based).")
@click.option("-c", "--concurrency", type=Number(IN_FLIGHT), default=16, show_default=True,
              help="Conversations in flight.")  # fmt: skip
@click.option("--repeat", type=Number(REPEAT), help="Samples of each conversation per target: "
              "each scenario is then judged on its pass rate (see min_pass_rate).")  # fmt: skip
@click.option("-k", "--filter", "filters", multiple=True, help="Scenario id glob or tag:NAME.")
@click.option("--shard", help="Run only shard K of N (K/N).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), metavar="RUN_DIR",
              help="Continue RUN_DIR: run what it has not recorded. -c, --stream, --timeout, "
              "--max-retries, --max-wait, --idle-timeout and --max-cost may change; options "
              "that would change what it runs are refused.")  # fmt: skip
@click.option("--retry-failed", is_flag=True, help="With --resume: run failed conversations again.")
@click.option("--force", is_flag=True, help="With --resume: accept changed scenario files.")
@click.option("--stream/--no-stream", default=False, show_default=True,
              help="Stream replies (SSE) where the models file sets no 'stream'.")  # fmt: skip
@click.option("--timeout", type=Number(SECONDS), help="Seconds per attempt.")
@click.option("--max-retries", type=Number(RETRIES), help="Retries per request.")
@click.option(
    "--max-wait", type=Number(SECONDS_OR_OFF), help="Cap in seconds on any one backoff wait."
)
@click.option("--judge", help="Target that grades judge checks naming no target.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False),
              help="Also write the run's compare page to FILE ('-': stdout).")  # fmt: skip
@click.option("--max-cost", type=Number(USD), help="USD: start no conversation once "
              "the run's estimated cost passes this (the rest stay for --resume).")  # fmt: skip
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False),
              help="Also write the run's JUnit file to FILE ('-': stdout).")  # fmt: skip
@click.option("--cache", metavar="DIR", help="Replay replies cached in DIR, send and store "
              "the rest (default: the models file's cache:, else off).")  # fmt: skip
@click.option("--no-cache", is_flag=True, help="No reply cache, whatever the models file says.")
@click.option("--cache-only/--no-cache-only", default=False, help="Send nothing: a reply not "
              "in the cache fails (cache_miss); no key is needed.")  # fmt: skip
@batch_options
@click.option("--idle-timeout", type=Number(SECONDS_OR_OFF),
              help="Seconds without a byte once a response began (0: off).")  # fmt: skip
@executor_options
@click.option("--no-progress", is_flag=True,
              help="No progress bar or lines on stderr (the end table stays).")  # fmt: skip
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
    judge: str | None,
    html_file: str | None,
    max_cost: float | None,
    junit_file: str | None,
    cache: str | None,
    no_cache: bool,
    cache_only: bool,
    batch: bool,
    cancel_batches: bool,
    idle_timeout: float | None,
    executor: str,
    workers: int | None,
    ray_address: str | None,
    no_progress: bool,
    dry_run: bool,
) -> None:
    """Run SCENARIOS (files or folders) against every -m target."""
    from runner.engine import run as runs
    from runner.engine.dryrun import dry_run as first_requests
    from runner.engine.signals import remembered

    if junit_file == html_file == STDOUT:
        raise InputError("--junit - and --html - would both write to stdout; give one a file")

    with remembered():  # a signal from here on ends the run cleanly (exit 130)
        if cache is not None and no_cache:
            raise InputError("give --cache DIR or --no-cache, not both")
        if resume_dir:
            _resume(Path(resume_dir), retry_failed, force, no_progress, dry_run)
            return
        if not paths or not targets:
            raise InputError(NOTHING_TO_RUN)
        inv = _invocation(click.get_current_context().params)
        if inv.executor != "ray" and (inv.workers or inv.ray_address):
            raise InputError("--workers and --ray-address go with --executor ray")
        if dry_run:
            for text in first_requests(runs.load(inv, need_keys=False)[2], inv.stream):
                click.echo(text)
            return
        finished = runs.start(inv, runs.new_run_dir(output_dir, run_id), not no_progress)
        _finished(finished, junit_file, html_file)


def _resume(
    run_dir: Path, retry_failed: bool, force: bool, no_progress: bool, dry_run: bool
) -> None:
    """`run --resume RUN_DIR`: the run continued, or with --dry-run the requests it would send."""
    from runner.engine import resume

    ctx = click.get_current_context()
    given = _given(ctx, skip=RESUME_OWN)
    if "no_cache" in given:  # the same setting as --cache: no folder
        given["cache"] = replace(given.pop("no_cache"), value=NO_CACHE)
    if dry_run:
        for text in resume.resume_dry_run(run_dir, retry_failed, force, given):
            click.echo(text)
        return
    resumed = resume.resume(run_dir, retry_failed, force, not no_progress, given)
    _finished(resumed, ctx.params["junit_file"], ctx.params["html_file"])


def _invocation(params: dict[str, Any]) -> Invocation:
    """What `run` was asked to do, from its options (the models file found when not given)."""
    from runner.engine.run import Invocation, default_models_file

    return Invocation(
        paths=list(params["paths"]),
        targets=list(params["targets"]),
        models_file=default_models_file(params["models_file"]),
        base_url=params["base_url"],
        repeat=params["repeat"],
        filters=list(params["filters"]),
        shard=params["shard"],
        stream=params["stream"],
        concurrency=params["concurrency"],
        timeout_s=params["timeout"],
        max_retries=params["max_retries"],
        max_wait_s=params["max_wait"],
        judge=params["judge"],
        max_cost=params["max_cost"],
        idle_timeout_s=params["idle_timeout"],
        cache=NO_CACHE if params["no_cache"] else params["cache"],
        cache_only=params["cache_only"],
        batch=params["batch"],
        executor=params["executor"],
        workers=params["workers"],
        ray_address=params["ray_address"],
    )


# options of `run` that only say what this command does with a run (with --resume too)
RESUME_OWN = ("resume_dir", "retry_failed", "force", "no_progress", "dry_run", "junit_file",
              "html_file")  # fmt: skip


def _given(ctx: click.Context, skip: tuple[str, ...]) -> dict[str, Given]:
    """The options typed on the command line (or set from the environment), but SKIP."""
    from runner.engine.resume import Given

    typed = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {
        p.name: Given(_flag(p), ctx.params[p.name])
        for p in ctx.command.params
        if p.name and p.name not in skip and ctx.get_parameter_source(p.name) in typed
    }


def _flag(param: click.Parameter) -> str:
    """How an option is typed (its long form), or an argument's metavar."""
    if isinstance(param, click.Argument):
        return "SCENARIOS"
    return "/".join(param.opts)


def _finished(finished: Finished, junit_file: str | None, html_file: str | None) -> NoReturn:
    """The end-of-run table and its notes on stdout (on stderr when the JUnit file or the
    compare page goes to stdout, `-`), those files when asked for, one line on stderr, and
    the run's exit code."""
    from runner.results.report import render, render_notes, render_rates

    to_stderr = STDOUT in (junit_file, html_file)

    if html_file:
        from runner.results.compare import write_page

        click.echo(f"compare page: {write_page([finished.run_dir], Path(html_file))}", err=True)
    click.echo(render(finished.rows), err=to_stderr)
    echo_notes(render_notes(finished.rows), err=to_stderr)
    echo_notes(render_rates(finished.groups), err=to_stderr)
    if junit_file:
        from runner.results.junit import write_junit

        write_junit(finished.run_dir, Path(junit_file), finished.plan)
    click.echo("\n" + finished.line(), err=True)
    sys.exit(finished.exit_code)


@main.command("mock-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="0 picks a free port and prints it.")  # fmt: skip
@click.option("--latency-ms", type=mock_number("latency_ms"), default=0.0,
              help="Milliseconds each answer waits before it starts.")  # fmt: skip
@click.option("--jitter-ms", type=mock_number("jitter_ms"), default=0.0,
              help="Up to this many ms more or less than --latency-ms.")  # fmt: skip
@click.option("--seed", type=int, default=0,
              help="Seed of the fault and jitter draws (same seed, same faults).")  # fmt: skip
@click.option("--error-rate", type=mock_number("error_rate"), default=0.0, help="429/500/503 mix.")
@click.option("--cut-rate", type=mock_number("cut_rate"), default=0.0, help="Streams cut midway.")
@click.option("--malformed-rate", type=mock_number("malformed_rate"), default=0.0,
              help="Share of answers (0..1) whose body is not valid JSON / SSE.")  # fmt: skip
@click.option("--slow-rate", type=mock_number("slow_rate"), default=0.0,
              help="Share of answers (0..1) delayed by --slow-ms more.")  # fmt: skip
@click.option("--slow-ms", type=mock_number("slow_ms"), default=2000.0, show_default=True,
              help="Extra delay of a slow answer.")  # fmt: skip
@click.option("--retry-after-ms", type=mock_number("retry_after_ms"), default=50, show_default=True,
              help="The wait an injected 429/503 asks for.")  # fmt: skip
@click.option("--limit-rpm", type=mock_number("limit_rpm"), default=0.0,
              help="Requests a minute (x-ratelimit-limit-requests); past it, 429.")  # fmt: skip
@click.option("--limit-tpm", type=mock_number("limit_tpm"), default=0.0,
              help="Tokens a minute (a reply costs its total tokens).")  # fmt: skip
@click.option("--limit-window-s", type=mock_number("limit_window_s"), default=60.0,
              show_default=True, help="Seconds the limits are enforced over: 1 serves 60,000 "
              "a minute as 1,000 a second, a bucket of 1,000 (OpenAI's quantization).")  # fmt: skip
@click.option("--limit-headers", type=click.Choice(["openai", "window", "none"]),
              default="openai", show_default=True, help="What answers say of the limits: "
              "OpenAI's per-minute x-ratelimit-* headers (anthropic-ratelimit-* on "
              "/v1/messages), the enforcing window's, or none (429s with Retry-After "
              "only).")  # fmt: skip
@click.option("--limit-concurrency", type=mock_number("limit_concurrency"), default=0,
              help="Requests in progress at once; past it, 429.")  # fmt: skip
@click.option(
    "--batch-delay-ms",
    type=mock_number("batch_delay_ms"),
    default=0.0,
    help="How long a batch of the Batch APIs runs before its lines are answered.",
)
@click.option("--batch-fail-rate", type=mock_number("batch_fail_rate"), default=0.0,
              help="Share of a batch's lines (0..1) that fail.")  # fmt: skip
@click.option("--batch-expire", type=mock_number("batch_expire"), default=0,
              help="This many first batches expire, with no answers.")  # fmt: skip
@click.option("--require-key", envvar="MOCK_REQUIRE_KEY",
              help="Answer 401 unless this key is sent (or set MOCK_REQUIRE_KEY).")  # fmt: skip
def mock_server(host: str, port: int, **opts: Any) -> None:
    """Serve the mock OpenAI Chat, Responses, Gemini and Anthropic Messages APIs on HOST:PORT."""
    from runner.mock import MockOptions, serve

    serve(MockOptions(**opts), host, port)


for _command in (cli_results.report, cli_results.compare, cli_results.junit, cli_results.diff,
                 cli_results.export, cli_results.import_, cli_results.merge):  # fmt: skip
    main.add_command(_command)
