"""Which backend generates for a model reference: local (transformers, vllm) or served (completions, chat)."""

from __future__ import annotations

from tasks.core.models import ModelRef
from tasks.generation.chat import ChatBackend
from tasks.generation.llm import LLMBackend, TransformersBackend, VLLMBackend
from tasks.generation.served import OpenAIBackend, ServedOptions


def open_backend(model: ModelRef, batch_size: int = 64, options: ServedOptions | None = None) -> LLMBackend:
    """The backend for a resolved model reference: a served model over HTTP, or a local one.

    `batch_size` is the contexts per generate call for a local model, the requests in flight for a
    served one; `options` how a served one is reached (retries, key, cache, chat mode).
    """
    if model.kind == "served":
        served = ChatBackend if model.backend == "openai-chat" else OpenAIBackend
        return served(model.url or "", model.served_name or "", model.tokenizer or "", batch_size, options)
    if model.path is None:
        raise ValueError(f"model {model.reference!r} cannot generate: it is not a local or served model")
    if model.backend == "vllm":
        return VLLMBackend(model.path)
    if model.backend == "transformers":
        return TransformersBackend(model.path, batch_size=batch_size)
    raise ValueError(f"unknown backend {model.backend!r} for {model.reference!r}; choose transformers or vllm")
