"""A small OpenAI chat-completions client (the official SDK was too heavy for the workers)."""

import json
import logging

import requests
from django.conf import settings

log = logging.getLogger("examx.llm")


class LLMError(RuntimeError):
    pass


def chat(system, user, *, temperature=0.2, timeout=60):
    """The assistant's reply, parsed as JSON (every prompt asks for a JSON object)."""
    reply = requests.post(
        f"{settings.OPENAI_BASE_URL}/chat/completions",
        headers={"Authorization": f"Bearer {settings.OPENAI_API_KEY}"},
        json={
            "model": settings.OPENAI_MODEL,
            "temperature": temperature,
            "response_format": {"type": "json_object"},
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user}],
        },
        timeout=timeout,
    )
    if reply.status_code != 200:
        raise LLMError(f"LLM API answered {reply.status_code}: {reply.text[:200]}")
    content = reply.json()["choices"][0]["message"]["content"]
    try:
        return json.loads(content)
    except ValueError as exc:
        raise LLMError(f"the model did not answer JSON: {content[:200]!r}") from exc
