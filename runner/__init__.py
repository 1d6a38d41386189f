"""dialogue-runner: run scripted multi-turn conversations with LLM APIs in bulk."""

__version__ = "0.1.0"
