"""Judge checks: a model grades a reply against a rubric and answers with a JSON verdict.

The judge is asked through its target's client (the same retry loop and limits as any
turn); a reply that is not a verdict is retried like a malformed body. Its usage is
recorded as judge usage (usage.jsonl `"judge": true`, the check's `usage` and `cost_usd`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from runner.client.client import TargetClient
from runner.cost import cost
from runner.errors import ApiError, InputError, Kind, at
from runner.messages import Message
from runner.spec.scenarios import Judge, Scenario, fill

SYSTEM = (
    "You are a strict grader of chatbot replies. You get a rubric, the conversation so far "
    "and the assistant's reply to grade, as JSON on the last line of the user message. "
    "Decide whether the reply meets the rubric. Answer with only a JSON object: "
    '{"pass": true or false, "reason": "one short sentence"}'
)
FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def prompt(rubric: str, conversation: list[dict[str, str]], reply: str) -> str:
    """The judge's user message: instructions, then the material as one line of JSON."""
    material = {"rubric": rubric, "conversation": conversation, "reply": reply}
    return "Grade the reply against the rubric.\n" + json.dumps(material, ensure_ascii=False)


def parse_verdict(text: str) -> dict[str, Any]:
    """{"pass": bool, "reason": str} from the judge's reply (a fenced block is accepted).

    Anything else raises a retryable ApiError of kind malformed."""
    body = FENCE.sub("", text.strip())
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("pass"), bool)
        or not isinstance(data.get("reason", ""), str)
    ):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ApiError(
            Kind.MALFORMED, f'the judge did not answer {{"pass": bool, "reason": str}}: {shown!r}',
            retryable=True,
        )  # fmt: skip
    return {"pass": data["pass"], "reason": data.get("reason", "")}


@dataclass
class Judges:
    """The clients that can grade (by target name) and the default judge (--judge)."""

    clients: Mapping[str, TargetClient]
    default: str | None = None

    def client(self, judge: Judge) -> TargetClient:
        name = judge.target or self.default
        if name is None or name not in self.clients:  # load() has refused such a run
            raise ApiError(Kind.INTERNAL, f"no judge target {name!r} is set up")
        return self.clients[name]


async def grade(
    judge: Judge,
    judges: Judges,
    conversation: list[dict[str, str]],
    reply: str,
    values: dict[str, Any],
    where: tuple[str, int],
) -> dict[str, Any]:
    """The judge check's result: passed and reason from the verdict, or an error (not a pass)."""
    rubric = fill(judge.rubric, values)
    result: dict[str, Any] = {"kind": "judge", "passed": False, "rubric": rubric}
    try:
        client = judges.client(judge)
        result["judge"] = client.target.name
        messages = [Message.of_text("user", prompt(rubric, conversation, reply))]
        answer, attempts = await client.complete(
            SYSTEM, messages, client.params(), None, *where, judge=parse_verdict
        )
    except ApiError as err:
        result["error"] = err.as_record()
        result["reason"] = f"judge error ({err.kind}): {err.message}"
        return result
    verdict = parse_verdict(answer.text)
    result.update(passed=verdict["pass"], reason=verdict["reason"] or "(no reason given)")
    result.update(verdict=verdict, attempts=attempts, usage=answer.usage)
    result["cost_usd"] = cost(cast("dict[str, int]", answer.usage), client.target.price)
    if attempts == 0:  # a verdict replayed from the reply cache: nothing was spent
        result["cached_reply"] = True
    return result


def judge_names(scenarios: list[Scenario], default: str | None) -> dict[str, str]:
    """The targets that judge checks need (and --judge), each with where it is first named;
    InputError for a judge check that names no target when there is no --judge."""
    names, problems = {default: "--judge"} if default else {}, []
    for scenario in scenarios:
        for expect in [*(turn.expect for turn in scenario.turns), scenario.expect_final]:
            judge = expect.judge if expect else None
            if judge is None:
                continue
            name = judge.target or default
            if name is None:
                problems.append(
                    at(scenario.file, judge.line, "this judge check names no target: "
                       "give it 'target: NAME' or give --judge TARGET")
                )  # fmt: skip
            else:
                names.setdefault(name, at(scenario.file, judge.line, "judge target"))
    if problems:
        raise InputError(problems)
    return names
