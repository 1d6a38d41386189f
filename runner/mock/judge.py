"""The mock as a judge: a deterministic verdict for a grading request.

A grading request is one whose last user message ends with a line holding a JSON object
with string fields "rubric" and "reply" (the judge prompt dialogue-runner sends). The
verdict: pass when every "double-quoted" phrase of the rubric occurs in the reply (case
folded); a rubric without quoted phrases passes. A rubric containing NO_VERDICT_MARKER
gets a reply that is not a verdict, so a client's handling of a bad verdict can be tested.
"""

from __future__ import annotations

import json
import re

NO_VERDICT_MARKER = "[[no-verdict]]"
QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')


def grading(last_user: str) -> tuple[str, str] | None:
    """(rubric, reply) when the message is a grading request, else None."""
    line = last_user.rstrip().rpartition("\n")[2]
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    rubric, reply = data.get("rubric"), data.get("reply")
    if not isinstance(rubric, str) or not isinstance(reply, str):
        return None
    return rubric, reply


def verdict_text(last_user: str) -> str | None:
    """The verdict the mock answers a grading request with; None for any other message."""
    found = grading(last_user)
    if found is None:
        return None
    rubric, reply = found
    if NO_VERDICT_MARKER in rubric:
        return "I would rather not say."
    wanted = [a or b for a, b in QUOTED.findall(rubric)]
    missing = [w for w in wanted if w.casefold() not in reply.casefold()]
    if missing:
        reason = "the reply lacks " + ", ".join(f'"{w}"' for w in missing)
    elif wanted:
        reason = "the reply has " + ", ".join(f'"{w}"' for w in wanted)
    else:
        reason = "the rubric quotes nothing to look for"
    return json.dumps({"pass": not missing, "reason": reason}, ensure_ascii=False)
