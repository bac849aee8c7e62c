"""Guided (structured) decoding for the local backend: the backend writes the JSON answer and the
model fills in only the quotes, one request at a time or several in one batch."""
from __future__ import annotations

import json
from typing import Any, Iterable, Optional, Sequence

from rationale_kit.rationales.llm.backends.verbatim import QUOTE_STOPS, VerbatimIndex
from rationale_kit.rationales.llm.parsing import code_key


#: placeholders of the prompts' answer format (normalised): never a quote.
_ECHO_KEYS = ("VERBATIMTEXT", "CODE")


def _pick_token(logits: Any, text: str, allowed: Optional[list[int]], banned: set, decode: Any,
                temperature: float, generator: Any = None) -> int:
    """The next token from one row of logits; while the quote so far could still spell a code or a
    placeholder of the prompt's answer format, tokens that would continue spelling it are ruled
    out (a tiny model likes to echo those instead of quoting the note). ``allowed``: the only
    tokens that may be picked (verbatim decoding)."""
    import torch

    logits = logits.float().clone()
    if allowed is not None:
        keep = torch.full_like(logits, float("-inf"))
        idx = torch.tensor([a for a in allowed if a < logits.numel()], dtype=torch.long, device=logits.device)
        keep[idx] = logits[idx]
        logits = keep
    so_far = code_key(text)
    keys = [k for k in banned if k and k.startswith(so_far)]
    opening = not text.strip()
    if keys or opening:
        for t in torch.topk(logits, min(32, logits.numel())).indices.tolist():
            piece = decode([t])
            spelled = code_key(text + piece)
            if (spelled and any(k.startswith(spelled) for k in keys)) or (opening and piece.strip()[:1] in ("<", "[", "{")):
                logits[t] = float("-inf")
    if temperature > 0:
        return int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator))
    return int(torch.argmax(logits))


def _guided_steps(codes: Sequence[str], encode: Any, decode: Any, eos: set, *, max_quote_tokens: int,
                  max_quotes_per_code: int, max_new_tokens: int, verbatim: Optional[VerbatimIndex]) -> Any:
    """The answer of one request as a generator of decoding steps, shared by the one-request and
    the batched drivers: it yields ``("feed", ids)`` (tokens the backend writes: the JSON around
    the quotes, and each generated quote token) and ``("pick", text, allowed)`` (the model chooses
    the next token after everything fed so far; the driver sends the token id back), and returns
    ``(answer text, generated tokens, finish reason)``."""
    rationales: list[dict] = []
    n_out = 0
    spent = False
    banned = _banned(codes)  # never a quote: the codes, placeholders
    pending = '{"rationales": ['
    for j, code in enumerate(codes):
        if spent:  # codes never reached are left out (not "no quotes"): the runner marks them truncated
            break
        quotes: list[str] = []
        rationales.append({"code": code, "quotes": quotes})
        pending += (", " if j else "") + '{"code": ' + json.dumps(code, ensure_ascii=False) + ', "quotes": ["'
        for k in range(max(1, max_quotes_per_code)):
            yield ("feed", encode(pending))
            pending = ""
            ids: list[int] = []
            text, tail, how = "", "", "cap"
            while len(ids) < max_quote_tokens:
                if n_out >= max_new_tokens:
                    spent, how = True, "spent"
                    break
                allowed = None
                if verbatim is not None:
                    allowed = verbatim.allowed(text) + (sorted(eos) if verbatim.can_close(text) else [])
                    if not allowed:  # nothing in the note continues the quote: close it here
                        how = "cap"
                        break
                t = yield ("pick", text, allowed)
                n_out += 1
                if t in eos:
                    how = "eos"
                    break
                cand = decode(ids + [t])
                cuts = [i for i in (cand.find(c, len(text)) for c in QUOTE_STOPS) if i >= 0]
                if cuts:  # the token closes the string: keep what comes before the stop, not the token
                    cut = min(cuts)
                    pending = cand[len(text):cut]
                    text, tail, how = cand[:cut], cand[cut:], "stop"
                    break
                ids.append(t)
                text = cand
                yield ("feed", [t])
            q = text.strip().rstrip("\\").strip()
            if verbatim is not None:
                q = verbatim.original(verbatim.longest_prefix_in_note(q)).strip()
            if code_key(q) and q not in quotes and code_key(q) not in banned:
                quotes.append(q)
            pending += '"'
            if spent or how != "stop" or not tail.startswith('"') or k + 1 >= max_quotes_per_code:
                break
            after = tail[1:].lstrip()
            if not after:  # the token ended with the quote: ask the model whether the list goes on
                yield ("feed", encode(pending))
                pending = ""
                after = decode([(yield ("pick", "", None))]).lstrip()
            if not after.startswith(","):
                break
            pending += ', "'
        pending += "]}"
    answer = json.dumps({"rationales": rationales}, ensure_ascii=False)
    return answer, n_out, "MAX_TOKENS" if spent else "STOP"


def _banned(codes: Sequence[str]) -> set:
    """What a quote may never spell (:func:`code_key` form): the request's codes and the
    placeholders of the answer format."""
    return {code_key(c) for c in codes} | set(_ECHO_KEYS)


def _codec(tok: Any) -> tuple[Any, Any]:
    """``(encode, decode)`` of a tokenizer, both without special tokens: text -> ids, ids -> text."""

    def encode(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def decode(ids: Sequence[int]) -> str:
        return tok.decode(list(ids), skip_special_tokens=True)

    return encode, decode


def _forward_args(lm: Any) -> tuple[str, dict]:
    import inspect

    try:
        params = inspect.signature(getattr(lm, "forward", lm)).parameters
    except (TypeError, ValueError):
        params = {}
    cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 renamed it
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # no logits for the whole prompt
    return cache_arg, extra


def guided_answer(
    lm: Any,
    tok: Any,
    prompt_ids: Sequence[int],
    codes: Sequence[str],
    *,
    max_quote_tokens: int = 48,
    max_quotes_per_code: int = 2,
    max_new_tokens: int = 512,
    eos_ids: Iterable[int] = (),
    temperature: float = 0.0,
    verbatim: Optional[VerbatimIndex] = None,
    past: Any = None,
    timings: Optional[dict] = None,
) -> tuple[str, int, str]:
    """Structured decoding: the JSON answer is written here, the model fills in only the quotes.

    After the prompt the assistant turn is forced to ``{"rationales": [{"code": "<code 1>",
    "quotes": ["``; the model continues (greedily, or sampled when ``temperature`` > 0) until it
    writes a double quote or a newline, ends its turn, or reaches ``max_quote_tokens``; the string is
    closed there. If the model goes on with ``, "`` another quote follows (up to
    ``max_quotes_per_code``); then ``"]}, {"code": "<code 2>", "quotes": ["`` is forced, and so on.
    One KV cache serves the whole request: the prompt is read once, and every forced or generated
    token is fed once (forced text in one forward pass). At most ``max_new_tokens`` tokens are
    generated in all; codes left when they are spent are left out of the answer (finish reason
    ``MAX_TOKENS``), so that the runner reports them as truncated rather than as codes the model
    found nothing for.

    With ``verbatim`` (a :class:`VerbatimIndex` of the note) every token generated inside a quote
    must keep the quote a substring of the note (:meth:`VerbatimIndex.allowed`; case and white
    space normalised), and the quote is written as the note spells it: the quotes are verbatim by
    construction, only *which* part of the note is quoted is the model's choice.

    ``lm(input_ids=..., past_key_values=..., use_cache=True)`` must return ``.logits`` and
    ``.past_key_values`` (a ``transformers`` causal LM); ``tok`` encodes (``tok(text,
    add_special_tokens=False)["input_ids"]``) and decodes (``tok.decode(ids)``). Returns ``(text,
    generated tokens, finish reason)``; ``text`` is always valid JSON of the answer schema, built
    with ``json.dumps`` from the quotes (empty and repeated quotes are left out). A quote may not
    be one of the request's codes, a format placeholder (``<verbatim text>``) or punctuation only: tokens that
    would spell the code or a placeholder are ruled out while the quote could still become one, and
    a quote does not open with ``<``, ``[`` or ``{``. :func:`guided_answers_batched` runs several
    requests in one batch.

    ``past``: ``(n, cache)``, the model's KV cache after the first ``n`` prompt tokens (the local
    backend's shared prefix, :meth:`LocalBackend._prefix`); the prompt is then read from token
    ``n`` on. ``timings``: filled with ``prefill_s`` (the first forward pass: the prompt or what the
    prefix leaves) and ``decode_s`` (every later pass), in seconds.
    """
    import time

    import torch

    eos = {int(e) for e in eos_ids if e is not None}
    cache_arg, extra = _forward_args(lm)
    skip, cache0 = past if past is not None else (0, None)
    state: dict[str, Any] = {"cache": cache0, "logits": None}
    clock = {"prefill_s": 0.0, "decode_s": 0.0}
    if timings is not None:
        timings.update(clock)
    encode, decode = _codec(tok)
    banned = _banned(codes)
    steps = _guided_steps(codes, encode, decode, eos, max_quote_tokens=max_quote_tokens,
                          max_quotes_per_code=max_quotes_per_code, max_new_tokens=max_new_tokens, verbatim=verbatim)
    pending = list(prompt_ids)[skip:]  # fed lazily, right before the next token is needed
    reply: Any = None
    first = True
    while True:
        try:
            op = steps.send(reply)
        except StopIteration as done:
            if timings is not None:
                timings.update(clock)
            return done.value
        reply = None
        if op[0] == "feed":
            pending += op[1]
            continue
        if pending:
            t0 = time.perf_counter()
            out = lm(input_ids=torch.tensor([pending], dtype=torch.long), use_cache=True,
                     **{cache_arg: state["cache"]}, **extra)
            state["cache"], state["logits"] = getattr(out, cache_arg), out.logits[0, -1]
            pending = []
            clock["prefill_s" if first else "decode_s"] += time.perf_counter() - t0
            first = False
        reply = _pick_token(state["logits"], op[1], op[2], banned, decode, temperature)


def guided_answers_batched(
    lm: Any,
    tok: Any,
    prompts: Sequence[tuple[Sequence[int], Sequence[str], Optional[VerbatimIndex]]],
    *,
    max_quote_tokens: int = 48,
    max_quotes_per_code: int = 2,
    max_new_tokens: int = 512,
    eos_ids: Iterable[int] = (),
    temperature: float = 0.0,
    pad_id: int = 0,
) -> list[tuple[str, int, str]]:
    """:func:`guided_answer` for several requests ``(prompt ids, codes, verbatim index)`` at once,
    sharing every forward pass: each pass feeds, per request, everything it has to feed before its
    next pick (the prompt, the JSON around the quotes, the token it picked last), padded on the
    right and masked out, with explicit positions; a finished request feeds nothing until the last
    one ends. Answers are those of :func:`guided_answer` up to floating-point differences of
    batched arithmetic."""
    import torch

    eos = {int(e) for e in eos_ids if e is not None}
    cache_arg, _ = _forward_args(lm)  # logits of every position: each request's last one is read
    device = next(lm.parameters()).device if hasattr(lm, "parameters") else "cpu"
    encode, decode = _codec(tok)
    lanes = [_Lane(p, _guided_steps(codes, encode, decode, eos, max_quote_tokens=max_quote_tokens,
                                    max_quotes_per_code=max_quotes_per_code, max_new_tokens=max_new_tokens, verbatim=v),
                   _banned(codes))
             for p, codes, v in prompts]
    n = len(lanes)
    mask = torch.zeros((n, 0), dtype=torch.long, device=device)
    next_pos = torch.zeros(n, dtype=torch.long, device=device)
    cache: Any = None
    while True:
        for lane in lanes:  # advance each request to its next pick that needs new logits
            lane.advance(decode, temperature)
        lens = [len(lane.queue) for lane in lanes]
        width = max(lens)
        if width == 0:
            return [lane.result for lane in lanes]
        ids, new_mask = _batch_inputs([lane.queue for lane in lanes], width, pad_id, device)
        pos = next_pos[:, None] + torch.arange(width, device=device)[None, :]
        mask = torch.cat([mask, new_mask], dim=1)
        out = lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_arg: cache})
        cache = getattr(out, cache_arg)
        for i, (lane, k) in enumerate(zip(lanes, lens)):
            if k:
                lane.logits = out.logits[i, k - 1]
            lane.queue = []
        next_pos = next_pos + torch.tensor(lens, dtype=torch.long, device=device)


class _Lane:
    """One request of a batch: its decoding steps, the tokens queued for the next forward pass (the
    prompt first), the pick waiting for the logits after them, and its answer once done."""

    def __init__(self, prompt_ids: Sequence[int], steps: Any, banned: set):
        self.steps, self.banned = steps, banned
        self.queue: list[int] = list(prompt_ids)
        self.result: Any = None
        self.waiting: Any = None  # a "pick" op waiting for the logits after the queued tokens
        self.reply: Any = None
        self.logits: Any = None  # [vocab] after the last token fed

    def advance(self, decode: Any, temperature: float) -> None:
        """Run the steps to the next pick that needs new logits, or to the answer (``result``)."""
        while self.result is None:
            if self.waiting is not None:
                if self.queue:
                    break
                op, self.waiting = self.waiting, None
                self.reply = _pick_token(self.logits, op[1], op[2], self.banned, decode, temperature)
            try:
                op = self.steps.send(self.reply)
            except StopIteration as done:
                self.result = done.value
                break
            self.reply = None
            if op[0] == "feed":
                self.queue += op[1]
            else:
                self.waiting = op


def _batch_inputs(queues: Sequence[Sequence[int]], width: int, pad_id: int, device: Any) -> tuple[Any, Any]:
    """Every request's queued tokens for one forward pass: ``(ids, mask)``, both ``[n, width]``,
    left-aligned and padded on the right; the mask (1 = a real token) keeps the padding out of
    this and every later step."""
    import torch

    ids = torch.full((len(queues), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(queues), width), dtype=torch.long)
    for i, q in enumerate(queues):
        if q:
            ids[i, : len(q)] = torch.tensor(q, dtype=torch.long)
            mask[i, : len(q)] = 1
    return ids.to(device), mask.to(device)
