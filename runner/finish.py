"""One vocabulary of finish reasons across protocols: the same cut-off is `length` (Chat),
`max_output_tokens` (Responses) and `MAX_TOKENS` (Gemini). Records keep the provider's own
value beside the normalised one; checks compare the normalised one."""

from __future__ import annotations

FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "error", "other")

# the providers' own values (lower-cased), including what gateways pass through from others
RAW: dict[str, str] = {
    **dict.fromkeys(("stop", "completed", "end_turn", "stop_sequence", "eos"), "stop"),
    **dict.fromkeys(
        (
            "length",
            "max_tokens",
            "max_output_tokens",
            "model_length",
            "model_context_window_exceeded",
        ),
        "length",
    ),
    **dict.fromkeys(
        (
            "content_filter",
            "safety",
            "recitation",
            "blocklist",
            "prohibited_content",
            "spii",
            "image_safety",
            "image_prohibited_content",
            "image_recitation",
            "refusal",
        ),
        "content_filter",
    ),  # fmt: skip
    **dict.fromkeys(
        ("tool_calls", "function_call", "tool_use", "unexpected_tool_call", "too_many_tool_calls"),
        "tool_calls",
    ),
    **dict.fromkeys(("error", "failed", "malformed_function_call"), "error"),
}
BLOCKED = "blocked:"  # Gemini's promptFeedback.blockReason, as the Gemini adapter records it


def normalise(raw: str | None) -> str | None:
    """The normalised finish reason of a provider's value (None when it gave none)."""
    if raw is None:
        return None
    value = raw.lower()
    if value.startswith(BLOCKED):
        return "content_filter"
    return RAW.get(value, "other")
