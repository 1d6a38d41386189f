"""Protocol adapters, one file each, looked up by provider name: the registry.

A protocol is one Provider subclass in its own file (what it declares: providers/base.py);
registering it is its entry in the tuple below (README, "Adding a protocol").
"""

from runner.client.providers.anthropic import Anthropic
from runner.client.providers.base import Call, Provider, Reply, Request
from runner.client.providers.gemini import Gemini
from runner.client.providers.openai_chat import OpenAIChat
from runner.client.providers.openai_responses import OpenAIResponses

PROVIDERS: dict[str, type[Provider]] = {
    cls.name: cls for cls in (OpenAIChat, OpenAIResponses, Gemini, Anthropic)
}

__all__ = ["PROVIDERS", "Call", "Provider", "Reply", "Request"]
