"""``load_model``: a model folder → a ``LoadedModel`` that tokenizes, templates and generates.

The returned ``OnnxChatModel`` follows ``agent.engine.types.LoadedModel``. It is synchronous and
keeps one sequence's KV cache: one ``generate`` at a time (the pool serialises requests); close or
exhaust a ``generate`` iterator before starting the next one, because a new generation takes over
the cache that an older, unfinished iterator was using.

The cache outlives a generation: a prompt that begins with the previous prompt and reply (the next
turn of a chat) re-runs only its new tokens (``last_stats.reused_tokens`` says how many were kept).
Reused keys/values were computed in a differently shaped batch (and the kernels for one row and for
many round differently), so logits can differ in the last bits from a cold run, enough to flip a
sampled draw now and then. A request with a ``seed`` therefore runs its whole prompt afresh: the same
seed, model, prompt and settings give the same tokens, streaming or not, whatever ran before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

from agent.engine.chat_template import CHATML_TEMPLATE, ChatTemplate, read_template_sources
from agent.engine.constrain import Constraint
from agent.engine.contract import GraphContract
from agent.engine.decode import DecodeStats, run_decode
from agent.engine.graph_choice import open_graph
from agent.engine.model_files import ModelConfig, onnx_path, read_json, read_model_config, usable_context
from agent.engine.sampling import Sampler, resolve_sampling
from agent.engine.session import CPU, Runner, make_runner
from agent.engine.tokenizer import ModelTokenizer
from agent.engine.tool_format import detect_tool_format
from agent.engine.types import (
    ContextLengthExceeded,
    InvalidRequestError,
    ModelInfo,
    ModelLoadError,
    SamplingParams,
    Step,
)
from agent.hardware import resolve_device
from agent.variants import InvalidNameError, normalize_device

log = logging.getLogger(__name__)


class OnnxChatModel:
    """A loaded decoder with its tokenizer and chat template (implements ``LoadedModel``)."""

    def __init__(
        self,
        *,
        info: ModelInfo,
        config: ModelConfig,
        tokenizer: ModelTokenizer,
        template: ChatTemplate,
        session: ort.InferenceSession,
        contract: GraphContract,
        runner: Runner,
    ) -> None:
        self.info = info
        self.config = config
        self.tokenizer = tokenizer
        self.template = template
        self.contract = contract
        self._session: ort.InferenceSession | None = session
        self._runner: Runner | None = runner
        self.last_stats = DecodeStats()
        """Timings of the most recent generation (updated as it runs)."""

    # -- prompts ------------------------------------------------------------------------------

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """The chat template's text for these messages (raises ``TemplateError``)."""
        return self.template.render(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, extra=template_kwargs
        )

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """Render the chat template and tokenize it without adding special tokens (the template
        writes them). ``template_kwargs`` are extra template variables (e.g. ``enable_thinking``)."""
        text = self.render_chat(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, template_kwargs=template_kwargs
        )
        self._refuse_hopeless(text)
        return self.tokenizer.encode_rendered(text)

    def encode_text(self, text: str) -> list[int]:
        """Tokenize a raw prompt (BOS added only if the tokenizer files say so)."""
        self._refuse_hopeless(text)
        return self.tokenizer.encode_prompt(text)

    def _refuse_hopeless(self, text: str) -> None:
        """Refuse at once a text that cannot fit, whatever it tokenizes to: a 10 MB prompt would
        otherwise hold the model's turn for the many seconds tokenizing it takes."""
        at_least = len(text) // self.tokenizer.max_token_chars
        if at_least + 1 > self.info.context_length:
            raise ContextLengthExceeded(
                f"the prompt is at least {at_least} tokens long, more than this model's context length "
                f"of {self.info.context_length} tokens"
            )

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Generator[Step, None, None]:
        """See ``LoadedModel.generate`` and ``agent.engine.decode``. Validation happens here, at
        call time: ``ContextLengthExceeded`` / ``InvalidRequestError`` are raised before any work.
        The result is a generator: ``close()`` it to abandon a generation early."""
        runner = self._runner
        if runner is None:
            raise InvalidRequestError("the model has been closed")
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty")
        limit = self.tokenizer.vocab_size
        bad = [i for i in prompt_ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < limit]
        if bad:
            raise InvalidRequestError(f"prompt token ids outside the vocabulary (0..{limit - 1}): {bad[:5]}")
        context = self.info.context_length
        if len(prompt_ids) + 1 > context:
            raise ContextLengthExceeded(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {context} tokens "
                f"and at least one must be left for the reply"
            )
        room = context - len(prompt_ids)
        if params.max_tokens is not None and params.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1")
        max_new = room if params.max_tokens is None else min(params.max_tokens, room)
        plan = resolve_sampling(params, self.config.generation)
        if params.seed is not None:
            runner.reset()  # reproducible: no reuse of a cache computed in other batch shapes (see above)
        constraint = Constraint(self.tokenizer, params.grammar) if params.grammar else None
        self.last_stats = DecodeStats()
        return run_decode(
            runner=runner,
            tokenizer=self.tokenizer,
            prompt_ids=list(prompt_ids),
            sampler=Sampler(plan, limit, params.seed, list(prompt_ids)),
            max_new_tokens=max_new,
            stops=[params.stop] if isinstance(params.stop, str) else list(params.stop),
            eos_ids=self.tokenizer.eos_token_ids,
            vocab_limit=limit,
            cancel=cancel,
            stats=self.last_stats,
            constraint=constraint,
        )

    def close(self) -> None:
        """Drop the session; onnxruntime frees its memory when the last reference goes."""
        self._runner = None
        self._session = None


def _build_template(
    folder: Path, tokenizer_config: dict[str, Any], tokenizer: ModelTokenizer
) -> tuple[ChatTemplate, str]:
    sources = read_template_sources(folder, tokenizer_config)
    kind = "model"
    if not sources and tokenizer.has_token("<|im_start|>"):
        sources, kind = {"default": CHATML_TEMPLATE}, "chatml-fallback"
    elif not sources:
        kind = "none"
    return ChatTemplate(sources, tokenizer.template_variables()), kind


def load_model(
    path: Path,
    *,
    quantization: str,
    device: str,
    threads: int = 0,
    context_length: int | None = None,
) -> OnnxChatModel:
    """Load ``path`` (onnx-community layout) for ``quantization`` on ``device``.

    ``threads`` = 0 keeps onnxruntime's default; ``context_length`` overrides config.json's
    ``max_position_embeddings`` (use it to cap memory); either is cut to what the machine can hold
    (``model_files.usable_context``) before the runner allocates anything sized by it. Raises
    ``ModelLoadError`` naming the file or graph input at fault. A device that cannot be used falls
    back to the CPU and says why in ``info.fallback_reason``.
    """
    started = time.perf_counter()
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist")
    graph_file = onnx_path(folder, quantization)
    tokenizer_config = read_json(folder / "tokenizer_config.json", required=False)
    config = read_model_config(folder, tokenizer_config)
    if context_length is not None:
        if context_length < 2:
            raise ModelLoadError(f"context_length {context_length} is too small")
        context = context_length
    else:
        context = config.context_length
    tokenizer = ModelTokenizer(folder, config, tokenizer_config)
    template, template_kind = _build_template(folder, tokenizer_config, tokenizer)

    try:
        chosen, providers, why = resolve_device(device, list(ort.get_available_providers()))
        # "auto" landing on the CPU of a machine without an accelerator is the expected outcome.
        fallback = why if chosen == "cpu" and normalize_device(device) not in ("cpu", "auto") else None
    except InvalidNameError as exc:
        raise ModelLoadError(str(exc)) from None
    opened = open_graph(folder, graph_file, quantization, config, providers, threads)
    session, contract = opened.session, opened.contract
    used = session.get_providers()[0] if session.get_providers() else CPU
    if used != providers[0]:
        fallback = f"{providers[0]} could not be initialised; using {used}"
    kv_bytes = sum(spec.num_heads * spec.head_dim * np.dtype(spec.dtype).itemsize for spec in contract.kv)
    context, cut = usable_context(context, kv_bytes, psutil.virtual_memory().total)
    if cut:
        log.warning("%s: %s", folder.name, cut)
    runner = make_runner(session, contract, context, tokenizer.vocab_size)
    info = ModelInfo(
        path=folder,
        context_length=context,
        provider=used,
        requested_device=device,
        fallback_reason=fallback,
        load_s=time.perf_counter() - started,
        quantization=quantization,
        onnx_file=graph_file,
        graph=opened.graph,
        graph_note=opened.note,
        kv_cache=contract.has_cache,
        chat_template=template_kind,
        vocab_size=tokenizer.vocab_size,
        eos_token_ids=tuple(sorted(tokenizer.eos_token_ids)),
        tool_format=detect_tool_format(template, tokenizer),
    )
    return OnnxChatModel(
        info=info, config=config, tokenizer=tokenizer, template=template,
        session=session, contract=contract, runner=runner,
    )
