"""Gemini: POST /v1beta/models/{model}:generateContent and :streamGenerateContent (§3)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from runner.mock import reply as rp
from runner.mock.faults import MockError, gemini_authorized, gemini_error, gemini_error_body
from runner.mock.reply import Message, Reply
from runner.mock.state import MockState
from runner.mock.wire import Out, Protocol, dumps, int_or_none, json_str, tool_names

FINISH = {rp.STOP: "STOP", rp.LENGTH: "MAX_TOKENS", rp.FAILED: "STOP"}
METHODS = ("generateContent", "streamGenerateContent")
SAFETY = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]
FAIL_MESSAGE = "The model failed while answering (mock [[error]] marker)."


def pick(obj: Any, camel: str, snake: str) -> Any:
    """A field under its camelCase or snake_case name (None when absent)."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def parts_text(parts: Any) -> str:
    """Joined text of the parts, thought parts left out."""
    if isinstance(parts, dict):
        parts = [parts]
    if not isinstance(parts, list):
        return ""
    texts = (
        rp.IMAGE if pick(p, "inlineData", "inline_data") or pick(p, "fileData", "file_data")
        else p.get("text")
        for p in parts
        if isinstance(p, dict) and p.get("thought") is not True
    )  # fmt: skip
    return "".join(t for t in texts if isinstance(t, str))


def content_messages(content: Any) -> list[Message]:
    """One Content as (role, text): role model → assistant, missing → user; each
    functionResponse part a tool result (role user or function) of its own."""
    if isinstance(content, str):
        return [("user", content)]
    if not isinstance(content, dict):
        raise MockError(400, "Each content must be an object with parts.")
    role = content.get("role") or "user"
    parts = content.get("parts")
    parts = [parts] if isinstance(parts, dict) else parts if isinstance(parts, list) else []
    results = [pick(p, "functionResponse", "function_response") for p in parts]
    out: list[Message] = [
        ("tool", dumps(r.get("response"))) for r in results if isinstance(r, dict)
    ]
    if not out or parts_text(parts):
        out.append(("assistant" if role == "model" else role, parts_text(parts)))
    return out


def system_message(body: dict[str, Any]) -> list[Message]:
    """systemInstruction (Content, parts list or string) as a leading system message."""
    value = pick(body, "systemInstruction", "system_instruction")
    if isinstance(value, dict):
        value = value.get("parts")
    text = value if isinstance(value, str) else parts_text(value)
    return [("system", text)] if text else []


def parse_messages(body: Any) -> list[Message]:
    """System instruction plus contents as (role, text)."""
    if not isinstance(body, dict):
        raise MockError(400, "The request body must be a JSON object.")
    contents = body.get("contents")
    if isinstance(contents, dict | str):
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise MockError(400, "* GenerateContentRequest.contents: contents is not specified")
    return system_message(body) + [m for c in contents for m in content_messages(c)]


def thinking(config: Any) -> tuple[int, bool]:
    """Thinking tokens and includeThoughts from generationConfig.thinkingConfig."""
    cfg = pick(config, "thinkingConfig", "thinking_config")
    budget = pick(cfg, "thinkingBudget", "thinking_budget")
    level = pick(cfg, "thinkingLevel", "thinking_level")
    include = pick(cfg, "includeThoughts", "include_thoughts") is True
    if budget is None and isinstance(level, str):
        return rp.effort_tokens(level.lower()), include
    return rp.budget_tokens(budget), include


def usage_json(reply: Reply, candidates: int | None, final: bool) -> str:
    """usageMetadata as JSON: running totals, or the full final object."""
    p, t = reply.input_tokens, reply.reasoning_tokens
    use = f'{{"promptTokenCount":{p}'
    if candidates is not None:
        use += f',"candidatesTokenCount":{candidates}'
    use += f',"totalTokenCount":{p + (candidates or 0) + t}'
    if t:
        use += f',"thoughtsTokenCount":{t}'
    if final and reply.cached_tokens:
        use += f',"cachedContentTokenCount":{reply.cached_tokens}'
    if final:
        use += f',"promptTokensDetails":[{{"modality":"TEXT","tokenCount":{p}}}]'
    return use + "}"


def text_parts(text: str) -> str:
    """A parts array holding one text part."""
    return f'[{{"text":{json_str(text)}}}]'


class Chunks:
    """GenerateContentResponse JSON strings sharing modelVersion and responseId."""

    def __init__(self, model: str, rid: str) -> None:
        self.tail = f',"modelVersion":{json_str(model)},"responseId":"{rid}"}}'
        self.items: list[str] = []

    def add(self, parts: str | None, usage: str, finish: str | None = None) -> None:
        """Append a chunk with one candidate: parts (a JSON array or None), finishReason."""
        content = '{"role":"model"}' if parts is None else f'{{"role":"model","parts":{parts}}}'
        end = f',"finishReason":"{finish}"' if finish else ""
        candidate = f'{{"content":{content}{end},"index":0}}'
        self.items.append(f'{{"candidates":[{candidate}],"usageMetadata":{usage}{self.tail}')

    def blocked(self, reply: Reply) -> None:
        """Append the blocked-prompt answer: promptFeedback and no candidates."""
        feedback = dumps({"blockReason": "SAFETY", "safetyRatings": SAFETY})
        usage = usage_json(reply, None, True)
        self.items.append(f'{{"promptFeedback":{feedback},"usageMetadata":{usage}{self.tail}')


def thought_part(reply: Reply) -> str:
    """A thought summary part (only with includeThoughts and thinking on)."""
    return dumps({"text": f"mock thought: reading {reply.messages} messages.", "thought": True})


def call_parts(reply: Reply) -> list[str]:
    """Each call as a functionCall part (args an object; no id, as Gemini often gives)."""
    return [dumps({"functionCall": {"name": n, "args": json.loads(a)}}) for n, a in reply.calls]


def whole(chunks: Chunks, reply: Reply, include: bool) -> None:
    """The non-streaming answer as one chunk."""
    parts = [thought_part(reply)] if include and reply.reasoning_tokens else []
    if reply.text:
        parts.append(dumps({"text": reply.text}))
    parts += call_parts(reply)
    array = f"[{','.join(parts)}]" if parts else None
    chunks.add(array, usage_json(reply, reply.text_tokens, True), FINISH[reply.finish])


def streamed(chunks: Chunks, reply: Reply, include: bool) -> None:
    """Incremental chunks: thought first, text pieces with running usage, finish on the last."""
    if include and reply.reasoning_tokens:
        chunks.add(f"[{thought_part(reply)}]", usage_json(reply, None, False))
    pieces = rp.stream_pieces(reply)
    failed = reply.finish == rp.FAILED
    sent = 0
    for piece in pieces if failed else pieces[:-1]:
        sent += len(piece)
        chunks.add(text_parts(piece), usage_json(reply, rp.length_tokens(sent), False))
    if failed:
        chunks.items.append(dumps(gemini_error_body(MockError(500, FAIL_MESSAGE), 0)))
        return
    last = text_parts(pieces[-1]) if pieces else None
    if reply.calls:  # a functionCall part arrives whole
        last = f"[{','.join(call_parts(reply))}]"
    chunks.add(last, usage_json(reply, reply.text_tokens, True), FINISH[reply.finish])


def split_path(request: web.Request) -> tuple[str, str]:
    """(model, method) from models/{model}:{method}; unknown method → 404."""
    model, _, method = request.match_info["target"].rpartition(":")
    if not model or method not in METHODS:
        raise MockError(404, f"Method '{method}' not found for models/{model}.")
    return model, method


def is_stream(request: web.Request, body: Any) -> bool:
    """True for :streamGenerateContent with alt=sse."""
    target = request.match_info.get("target", "")
    return target.endswith(":streamGenerateContent") and request.query.get("alt") == "sse"


def render(request: web.Request, body: Any, state: MockState) -> Out:
    """Answer generateContent, or streamGenerateContent as SSE (alt=sse) or a JSON array."""
    model, method = split_path(request)
    messages = parse_messages(body)
    config = pick(body, "generationConfig", "generation_config")
    thoughts, include = thinking(config)
    limit = int_or_none(pick(config, "maxOutputTokens", "max_output_tokens"), "maxOutputTokens")
    tools = tool_names(body.get("tools"), "functionDeclarations") | tool_names(
        body.get("tools"), "function_declarations"
    )
    reply = rp.make_reply(messages, thoughts, limit, pick(config, "seed", "seed"), tools)
    stream = method == "streamGenerateContent"
    if reply.finish == rp.FAILED and not stream:
        raise MockError(500, FAIL_MESSAGE)
    chunks = Chunks(model, state.next_id())
    if reply.finish == rp.BLOCKED:
        chunks.blocked(reply)
    else:
        (streamed if stream else whole)(chunks, reply, include)
    if is_stream(request, body):
        frames = [f"data: {c}\r\n\r\n".encode() for c in chunks.items]
        return Out(frames=frames)
    text = chunks.items[0] if not stream else f"[{','.join(chunks.items)}]"
    return Out(body=text.encode())


PROTOCOL = Protocol(
    authorized=gemini_authorized, error=gemini_error, is_stream=is_stream, render=render
)
