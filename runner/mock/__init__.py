"""The built-in mock LLM server (OpenAI Chat, OpenAI Responses, Gemini, Anthropic Messages)
with fault injection.

Replies are deterministic (runner.mock.reply). Markers in the last user message:
"[[block]]" blocks the prompt (Gemini: promptFeedback SAFETY and no candidates; Chat:
finish_reason "content_filter" with content null; Responses: status "incomplete",
incomplete_details.reason "content_filter", no message item; Anthropic: stop_reason
"refusal", no content); "[[error]]" fails the request
(non-streaming: HTTP 500; streaming: half the text, then the protocol's in-stream error).
"""

from runner.mock.reply import make_reply, reply_text, tokens
from runner.mock.server import MockServer, make_app, serve, start_mock
from runner.mock.state import MockOptions
from runner.mock.thread import MockThread

__all__ = [
    "MockOptions",
    "MockServer",
    "MockThread",
    "make_app",
    "make_reply",
    "reply_text",
    "serve",
    "start_mock",
    "tokens",
]
