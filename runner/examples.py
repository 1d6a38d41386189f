"""How --help looks: each command ends with examples (by command path), and a group lists
its commands with their whole summaries (click cuts them at the terminal's width)."""

from __future__ import annotations

import click

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "dialogue-runner run scenarios/ -m mock",
        "dialogue-runner report outputs/RUN_ID",
    ),
    "validate": (
        "dialogue-runner validate scenarios/",
        "dialogue-runner validate scenarios/judged.yaml --judge gpt54",
    ),
    "run": (
        "dialogue-runner run scenarios/ -m mock -m mock-gemini -c 32",
        "dialogue-runner run scenarios/ -m gpt54 --models models.yaml --max-cost 5",
        "dialogue-runner run --resume outputs/RUN_ID -c 8      # continue a stopped run",
        "dialogue-runner run scenarios/ -m gpt54 --cache .ci/replies --cache-only  # no key",
        "dialogue-runner run scenarios/ -m gpt54 --executor ray --ray-address auto  # a cluster",
    ),
    "report": (
        "dialogue-runner report outputs/RUN_ID",
        "dialogue-runner report outputs/RUN_ID --format markdown >> summary.md",
    ),
    "compare": (
        "dialogue-runner compare outputs/RUN_ID --html page.html",
        "dialogue-runner compare outputs/BASE outputs/NEW --html compare.html",
    ),
    "mock-server": (
        "dialogue-runner mock-server --port 8000",
        "dialogue-runner mock-server --port 0 --latency-ms 50 --error-rate 0.1 --seed 7",
        "dialogue-runner mock-server --limit-rpm 9000 --limit-window-s 0.1 --limit-headers none",
    ),
    "junit": ("dialogue-runner junit outputs/RUN_ID -o junit.xml",),
    "diff": (
        "dialogue-runner diff outputs/BASE outputs/NEW",
        "dialogue-runner diff outputs/BASE outputs/NEW --format markdown > diff.md",
        "dialogue-runner diff .ci/baseline outputs/NEW --match scenario  # another model",
    ),
    "export": (
        "dialogue-runner export outputs/RUN_ID --format openai -o train.jsonl --only-passed",
        "dialogue-runner export outputs/RUN_ID --format sharegpt -o data.jsonl "
        "--split validation=0.1 --with-ids",
        "dialogue-runner export outputs/RUN_ID --format jsonl -o - | jq .status",
    ),
    "import": ("dialogue-runner import mtbench question.jsonl -o mt_bench.yaml",),
    "import mtbench": (
        "dialogue-runner import mtbench question.jsonl -o mt_bench.yaml",
        "dialogue-runner import mtbench question.jsonl -o -",
    ),
    "merge": ("dialogue-runner merge outputs/shard-1 outputs/shard-2 -o outputs/all",),
}


def examples(path: str) -> str | None:
    """The epilog of the command at PATH ("" for the top level), kept as written (\\b)."""
    lines = EXAMPLES.get(path)
    if not lines:
        return None
    return "\b\nExamples:\n" + "\n".join("  " + line for line in lines)


class Examples(click.Command):
    """A command whose --help ends with its examples."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = []
        while ctx.parent is not None:
            names.append(ctx.info_name or "")
            ctx = ctx.parent
        text = examples(" ".join(reversed(names)))
        if text:
            formatter.write_paragraph()
            formatter.write_text(text)


class HelpGroup(Examples, click.Group):
    """A group whose help lists each command with its whole summary, then its examples."""

    command_class = Examples
    group_class = type  # subgroups are of the same class

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = [(n, self.get_command(ctx, n)) for n in self.list_commands(ctx)]
        rows = [(n, c.get_short_help_str(limit=1000)) for n, c in commands if c and not c.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
