"""PMGServedLLM: an LLM someone already serves (Ollama, LM Studio, vLLM, llama.cpp...) for the keywords."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..pmg_core.served_llm import API_KINDS, DEFAULT_CONTEXT_LENGTH, ServedLLM
from .node_support import validation_result
from .types import PMGLLM, ServedKeywordLLM
from .types import PMGServedLLM as ServedLLMSocket

logger = logging.getLogger(__name__)


class PMGServedLLM(io.ComfyNode):
    """Node: a chat model behind an HTTP API, for PMG Preference Extractor's keywords."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PMGServedLLM",
            display_name="PMG Served LLM",
            category="PMG/llm",
            description=(
                "An LLM you already serve (Ollama, LM Studio, vLLM, llama.cpp's server, transformers serve) as the "
                "source of PMG's explicit keywords: plug it into PMG Preference Extractor's llm input. Nothing is "
                "sent until a user's keywords are not cached; answers are greedy (temperature 0, seeded). Soft "
                "prompts need the LLM's hidden states, which a server does not give: connect a small local LLM "
                "(PMG LLM Loader) to soft_prompt_llm for PMG Soft Prompt Encoder."
            ),
            inputs=[
                io.String.Input(
                    "base_url", default="http://127.0.0.1:11434",
                    tooltip=("The server's root URL: Ollama http://127.0.0.1:11434, LM Studio http://127.0.0.1:1234, "
                             "llama.cpp http://127.0.0.1:8080, vLLM / transformers serve http://127.0.0.1:8000."),
                ),
                io.String.Input(
                    "model", default="llama3.2",
                    tooltip="The name the server knows the model by (`ollama list`, or the ids GET /v1/models lists).",
                ),
                io.Combo.Input(
                    "api", options=list(API_KINDS), default="ollama",
                    tooltip=("'ollama': Ollama's own /api/chat (sends keep_alive and num_ctx). 'openai': the "
                             "OpenAI-compatible /v1/chat/completions of LM Studio, vLLM, llama.cpp, transformers serve "
                             "(and Ollama too)."),
                ),
                io.Float.Input(
                    "timeout", default=120.0, min=1.0, max=3600.0, step=1.0,
                    tooltip="Seconds to wait for each answer (the first one includes the server loading the model).",
                ),
                io.String.Input(
                    "keep_alive", default="5m",
                    tooltip=("Ollama only: how long Ollama keeps the model in memory after answering; '0' frees its "
                             "VRAM at once (for the image model), '-1' keeps it. Empty: the server's default."),
                ),
                io.Int.Input(
                    "context_length", default=DEFAULT_CONTEXT_LENGTH, min=256, max=1_048_576,
                    tooltip=("Tokens the prompt and answer may take together (Ollama is told it as num_ctx). Long "
                             "histories lose their oldest items to fit; tokens are estimated, as a server gives no "
                             "tokenizer."),
                ),
                PMGLLM.Input(
                    "soft_prompt_llm", optional=True,
                    tooltip=("Optional: a local LLM from PMG LLM Loader that PMG Soft Prompt Encoder runs on (soft "
                             "tokens need hidden states, which a served model does not give)."),
                ),
            ],
            outputs=[
                ServedLLMSocket.Output(
                    display_name="llm",
                    tooltip="The served LLM (PMG_SERVED_LLM), for PMG Preference Extractor's llm input.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, base_url: str, model: str, api: str) -> bool | str:
        """The URL, model name and API kind, checked as the library checks them, before anything runs."""
        if None in (base_url, model, api):
            return True  # a linked value is only known when the graph runs; execute checks it then
        return validation_result(lambda: ServedLLM(base_url, model, api=api))

    @classmethod
    def execute(cls, base_url: str, model: str, api: str, timeout: float, keep_alive: str, context_length: int,
                soft_prompt_llm=None) -> io.NodeOutput:
        source = ServedLLM(base_url, model, api=api, timeout=timeout,
                           keep_alive=keep_alive if api == "ollama" else "", context_length=context_length)
        logger.info("PMG: keywords from %s (asked only for users not cached)", source)
        return io.NodeOutput(ServedKeywordLLM(source=source, soft_prompt_llm=soft_prompt_llm))


def served_activity(source: ServedLLM, requests_sent: int) -> dict:
    """What a served LLM did for one extraction, for PMG Preference Extractor's UI (and ``/history``) output."""
    return {"served": True, "api": source.api, "base_url": source.base_url, "model": source.model,
            "requests_sent": requests_sent}


NODES: list[type[io.ComfyNode]] = [PMGServedLLM]
