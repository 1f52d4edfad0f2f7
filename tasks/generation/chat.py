"""The chat backend: a hosted chat-completions API (OpenAI, DeepSeek, Together, a gateway) as a teacher,
repairer or evaluated model. `backend: openai-chat`; reference `http(s)://HOST/v1#MODEL`.

Chat APIs take messages, not token ids, so the engine hands this backend its trajectories and the
conversation is rebuilt from their segments each turn (stateless, so resumes and retries need
nothing kept). Two modes (`<stage>.chat_mode`):
- `tags`: the TIR grammar in text. A turn stops at a closing tag, which the API leaves out of the
  text; it is restored from the tag left open. Each model segment is an assistant message; each
  `<result>` goes back as a message of `<stage>.chat_result_role` (user, or tool).
- `tools`: native function calls. `python` and `search` are declared as tools; a call comes back as
  `<code>…</code>` or `<search>…</search>` text, so the trajectory is stored in the same grammar and
  segments as any other (scoring, repair, pairs and training are unchanged); its result goes back as
  a `tool` message.
Token ids of the rows are the policy tokenizer's encoding of the text (`<stage>.tokenizer`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from tasks.core.conversation import OPENING, TOOL_ARGUMENT, TOOLS, chat_messages
from tasks.core.tir import TOOL_STOPS
from tasks.generation.llm import Generation, SamplingParams
from tasks.generation.served import ServedBackend, usage_of
from tools_sandbox.http_retry import MalformedResponse


class Conversation(Protocol):
    """What the chat backend reads of a trajectory."""

    system: str | None
    user: str
    segments: list[Any]


def owed_stop(text: str, stops: Sequence[str]) -> str | None:
    """The stop string a turn that stopped on one must have ended with: the closing tag of the last tag
    it opened and did not close (chat APIs leave the matched stop out of the text)."""
    owed = [(text.rfind(OPENING[stop]), stop) for stop in stops if stop in OPENING]
    position, stop = max(owed, default=(-1, None))
    if stop is None or position < 0 or text.find(stop, position) >= 0:
        return None
    return stop


class ChatBackend(ServedBackend):
    """An OpenAI-compatible /v1/chat/completions endpoint, one request per trajectory turn."""

    path = "/chat/completions"
    speaks_chat = True

    def generate(self, *_args: Any, **_kwargs: Any) -> list[Generation]:
        """Token-id contexts are not what a chat API takes: the engine calls `generate_chat`."""
        raise TypeError("a chat-completions model continues conversations (generate_chat), not token ids")

    def generate_chat(
        self,
        conversations: Sequence[Conversation],
        stop: Sequence[str],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One request per conversation (its seed from `seeds`); one that fails after its retries errors
        only its own; a refused key raises ModelAuthError."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [
                pool.submit(self._turn, conversation, stop, params, None if seeds is None else seeds[index])
                for index, conversation in enumerate(conversations)
            ]
            return [future.result() for future in futures]

    def messages(self, conversation: Conversation) -> list[dict[str, Any]]:
        """The conversation so far as chat messages, in this backend's mode."""
        messages: list[dict[str, Any]] = (
            [{"role": "system", "content": conversation.system}] if conversation.system else []
        )
        messages.append({"role": "user", "content": conversation.user})
        if self.options.chat_mode == "tools":
            return messages + chat_messages(conversation.segments, wire=True)
        for segment in conversation.segments:
            role = self.options.chat_result_role if segment.kind == "tool" else "assistant"
            messages.append({"role": role, "content": segment.text})
        return messages

    def _turn(
        self, conversation: Conversation, stop: Sequence[str], params: SamplingParams, seed: int | None
    ) -> Generation:
        tools = self.options.chat_mode == "tools"
        body: dict[str, Any] = {
            "model": self.name,
            "messages": self.messages(conversation),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": [s for s in stop if not (tools and s in TOOL_STOPS)],
        }
        if tools:
            body["tools"] = TOOLS
        if seed is not None:
            body["seed"] = seed
        return self.served.generation(body, lambda data: self._parse(data, body["stop"]))

    def _parse(self, data: Any, stop: Sequence[str]) -> Generation:
        """A reply's first choice as a turn of the TIR grammar; MalformedResponse (retried) otherwise."""
        try:
            choice = data["choices"][0]
            message, finish = choice["message"], choice.get("finish_reason")
            content = message.get("content") or ""
            if not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
            calls = message.get("tool_calls") or []
            text, matched = content, None
            if calls:  # tools mode: the first call, written in the grammar the rest of the pipeline reads
                function = calls[0]["function"]
                name = function["name"]
                arguments = json.loads(function.get("arguments") or "{}")
                argument = str(arguments.get(TOOL_ARGUMENT.get(name, ""), "")) if isinstance(arguments, dict) else ""
                if name == "search":
                    text, matched = f"{content}<search> {argument} </search>", "</search>"
                else:  # python, or a tool that does not exist: run as code, its error goes back to the model
                    text, matched = f"{content}<code>\n{argument}\n</code>", "</code>"
            elif finish == "stop":
                matched = owed_stop(content, stop)
                text = content + (matched or "")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise MalformedResponse(f"not a chat completion ({type(exc).__name__}: {exc})"[:300]) from exc
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        reason = "stop" if matched else "length" if finish == "length" else "eos"
        return Generation(ids, text, reason, stop=matched, usage=usage_of(data))
