"""Talking to model providers: Anthropic Messages, OpenAI Chat Completions and Responses, and any
OpenAI-compatible server (Ollama, vLLM, LiteLLM's proxy) — requests, answers, streams, retries,
prices. Used by the ``llm`` agent and the planner; no NATS here."""
