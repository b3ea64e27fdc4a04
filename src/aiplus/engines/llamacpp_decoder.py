"""Continuous batching on one llama.cpp context: many sequences decoded together, on llama-cpp-python's bindings.

One thread owns the context. Each step decodes the next token of every running sequence in one batch, then prompt
chunks of newly admitted ones (up to ``n_batch`` tokens a step, one prompt per decode: see ``Decoder._step``);
sequences join between steps and leave when done, their KV cells removed. Each sequence samples with its own sampler chain (grammar, top-k, top-p, min-p,
temperature, seeded distribution), so its parameters stay its own.

Reproducibility: the context keeps one KV stream per sequence (``kv_unified = false``). Measured on SmolLM2 Q4_1,
a sequence's logits are then bit-identical whether it runs alone, beside others, joins mid-generation, reuses a
freed slot or has its prompt split into other chunks; with one unified KV buffer they differ by up to ~1.3 (presumably
its cells sit at other positions among the others', which changes the rounding of the attention sums), enough to
change a seeded sample. So the same seed gives the same text alone or batched.

Prefix reuse: a slot keeps the KV of its last prompt when its sequence leaves, and a new sequence takes the free
slot that shares the longest prefix with its prompt (a chat template's head, a common system prompt, a repeated
question), decoding only the rest: ``Decoder._admit`` says which cells are kept so that seeds stay exact.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# llama.cpp's CPU threads are an OpenMP team; libgomp's default lets idle team threads spin, and on a machine with
# more runnable threads than cores (the event loop and this decoder thread beside llama.cpp's, or other programs)
# the spinning starves the threads with work: a decode step of 8 tokens measured 2.6 s instead of 80 ms under
# load. Sleeping waiters cost one wake-up per decode. libgomp reads this once, when llama.cpp's library loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp as lib
import numpy

TOP_K = 40  # llama-cpp-python's defaults, kept so a seeded answer matches what its high-level API samples
MIN_P = 0.05


@dataclass(slots=True)
class Sampling:
    """How one sequence picks its tokens."""

    temperature: float
    top_p: float
    seed: int
    grammar: str | None = None  # GBNF, root rule "root"


@dataclass(slots=True)
class Event:
    """What a sequence produced in one step, as delivered to its consumer."""

    text: str = ""
    tokens: int = 0  # completion tokens since the previous event
    finish_reason: str | None = None
    error: str | None = None
    completion_tokens: int = 0  # total so far
    engine_s: float = 0.0  # the sequence's share of the decode steps' time so far (see ``Decoder._decode``)


class Sequence:
    """One request in the decoder. ``put`` receives its events, called on ``loop`` (the consumer's event loop)."""

    def __init__(
        self,
        prompt: list[int],
        max_tokens: int,
        stops: list[str],
        sampler: Any,
        loop: asyncio.AbstractEventLoop,
        put: Callable[[Event], None],
        hold_s: float = 0.0,
        greedy: bool = False,
    ):
        self.prompt = prompt
        self.hold_s = hold_s  # after the first event, merge events for this long (see ``Decoder._deliver``)
        self.greedy = greedy  # its sampler only takes the most likely token: argmax, without the sampler
        self.pending: Event | None = None
        self.sent_at: float | None = None
        self.max_tokens = max_tokens
        self.stops = [s for s in stops if s]
        self.sampler = sampler
        self.loop = loop
        self.put = put
        self.slot = -1
        self.fed = 0  # prompt tokens already decoded (or found in its slot's cache)
        self.cached = 0  # prompt tokens found in its slot's cache, not decoded again
        self.exact = 0  # leading prompt tokens whose KV a later request may reuse (see ``Decoder._admit``)
        self.next_token: int | None = None  # sampled, not yet decoded
        self.next_pos = 0  # its position in the sequence
        self.generated = 0
        self.engine_s = 0.0
        self.cancelled = False
        self.done = False
        self._reported = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # text that may be the start of a stop sequence

    def accept(self, token: int, piece: bytes, end_of_generation: bool, context_size: int) -> Event | None:
        """Take a sampled token; return the event to deliver (None: nothing to say yet)."""
        position = self.fed + self.generated  # where the token goes if decoded
        self.generated += 1
        context_full = position + 1 >= context_size
        if end_of_generation:
            return self._finish("stop")
        text = self._held + self._utf8.decode(piece)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return self._finish("stop", text[:cut])
        if self.generated >= self.max_tokens or context_full:
            self._held = ""
            return self._finish("length", text + self._utf8.decode(b"", final=True))
        keep = _stop_prefix(text, self.stops)
        self._held = text[len(text) - keep :]
        self.next_token, self.next_pos = token, position
        return self._event(text[: len(text) - keep]) if keep < len(text) else None

    def _event(self, text: str, finish: str | None = None) -> Event:
        n, self._reported = self.generated - self._reported, self.generated
        return Event(
            text=text,
            tokens=n,
            finish_reason=finish,
            completion_tokens=self.generated,
            engine_s=self.engine_s,
        )

    def _finish(self, reason: str, text: str | None = None) -> Event:
        self.done = True
        self.next_token = None
        if text is None:
            text = self._held + self._utf8.decode(b"", final=True)
        return self._event(text, reason)


def choose_slot(free: list[int], running: set[int], kept: list[list[int]], prompt: list[int]) -> int:
    """The free slot for a new sequence: the fewest runs of consecutive running slots, then the longest prefix of
    ``prompt`` kept in it, then the lowest id (see ``Decoder._admit``)."""
    return min(free, key=lambda s: (_runs(running | {s}), -_common_prefix(kept[s], prompt), s))


def _merged(earlier: Event, later: Event) -> Event:
    return Event(
        text=earlier.text + later.text,
        tokens=earlier.tokens + later.tokens,
        finish_reason=later.finish_reason,
        error=later.error,
        completion_tokens=later.completion_tokens,
        engine_s=later.engine_s,
    )


def _runs(slots: set[int]) -> int:
    """How many runs of consecutive ids ``slots`` make: llama.cpp computes each run of a step apart."""
    return sum(1 for s in slots if s - 1 not in slots)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that begins a stop sequence (held back until it is decided)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class Decoder:
    """Owns a llama.cpp context with ``n_seq`` sequences of ``n_ctx_seq`` tokens each, and the thread decoding it."""

    def __init__(
        self, model: Any, n_seq: int, n_ctx_seq: int, n_threads: int, n_batch: int = 512, name: str = ""
    ):
        self.model = model
        self.vocab = lib.llama_model_get_vocab(model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.n_seq = n_seq
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = max(n_batch, n_seq)
        params = lib.llama_context_default_params()
        params.n_ctx = n_seq * n_ctx_seq
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = n_threads
        params.kv_unified = False  # one KV stream per sequence: see the module's docstring
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        self._free = list(range(n_seq - 1, -1, -1))
        self._kept: list[list[int]] = [
            [] for _ in range(n_seq)
        ]  # per slot: the prompt tokens its KV still holds
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._wake = threading.Condition()
        self._closing = False
        self._outbox: list[tuple[Sequence, Event]] = []
        self._thread = threading.Thread(target=self._run, name=f"decoder-{name}", daemon=True)
        self._thread.start()

    # the caller's side -------------------------------------------------------------------------------------

    def submit(self, sequence: Sequence) -> None:
        with self._wake:
            self._waiting.append(sequence)
            self._wake.notify()

    @property
    def running(self) -> int:
        """Sequences holding a slot now."""
        return len(self._running)

    def cancel(self, sequence: Sequence) -> None:
        """Stop a sequence; its slot is freed before the next step, the others go on undisturbed."""
        sequence.cancelled = True
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        for sequence in [*self._running, *self._waiting]:
            self._release(sequence, Event(error="the engine stopped"))
        self._flush()
        lib.llama_batch_free(self.batch)
        lib.llama_free(self.ctx)

    # the decoder thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._waiting and not self._running:
                    self._wake.wait()
                if self._closing:
                    return
                while self._waiting and self._free:
                    self._admit(self._waiting.popleft())
            for sequence in [s for s in self._running if s.cancelled]:
                self._release(sequence, None)
            if self._running:
                self._step()
            self._flush()

    def _admit(self, sequence: Sequence) -> None:
        """Give a waiting sequence a free slot, and skip the prefix of its prompt whose KV the slot still holds
        (a chat template's head, a common system prompt, a repeated question).

        The slot is chosen first to keep the running slots consecutive: with one KV stream per sequence,
        llama.cpp splits a step into one computation per run of consecutive sequence ids in increasing order
        (``split_equal`` with ``sequential``), so slots {0, 1, 2, 3} decode in one pass and {0, 2, 5, 7} in four,
        each costing about as much as the whole step (measured: 8 sequences in reverse order, 300 ms a step; in
        order, 75 ms). Then the longest kept prefix, then the lowest id.

        Only KV that a fresh decode would compute bit for bit is kept: prompt tokens decoded in chunks of two or
        more (a token decoded alone, or generated, takes other kernels; see ``_step``). The rest of the prompt
        is then decoded in the same places as from scratch (chunks end at multiples of ``n_batch``), never
        starting with a lone token where a fresh decode has a chunk, so the same seed still gives the same text.
        """
        prompt = sequence.prompt
        slot = choose_slot(self._free, {s.slot for s in self._running}, self._kept, prompt)
        self._free.remove(slot)
        reuse = min(_common_prefix(self._kept[slot], prompt), len(prompt) - 1)
        while reuse > 0 and self._chunk_end(reuse, len(prompt)) - reuse == 1 and reuse % self.n_batch:
            reuse -= 1  # a lone first token where a fresh decode has it in a chunk
        lib.llama_memory_seq_rm(self.memory, slot, reuse, -1)
        self._kept[slot] = prompt[:reuse]
        sequence.slot, sequence.fed, sequence.cached, sequence.exact = slot, reuse, reuse, reuse
        self._running.append(sequence)

    def _chunk_end(self, start: int, length: int) -> int:
        """Where the prompt chunk from ``start`` ends: at the next multiple of ``n_batch``, or the prompt's end."""
        return min(length, (start // self.n_batch + 1) * self.n_batch)

    def _step(self) -> None:
        """One token for every generating sequence, in one decode (rows in slot order, see ``_admit``); then
        prompt chunks, one prompt per decode.

        Tokens of different sequences share a decode only when each has exactly one: a decode that mixes one
        sequence's prompt with others' tokens is split by llama.cpp into micro-batches of equal tokens per
        sequence, which cuts the prompt at places that depend on its neighbours, and a prompt token computed
        alone takes other kernels (ggml's vector path instead of llamafile's tiled one) than in a chunk.
        A prompt is cut at fixed places (every ``n_batch`` tokens), whatever runs beside it.
        """
        generating = sorted((s for s in self._running if s.next_token is not None), key=lambda s: s.slot)
        if generating and not self._decode([(s, s.next_token, s.next_pos, True) for s in generating]):
            return
        budget = self.n_batch
        for sequence in [s for s in self._running if s.fed < len(s.prompt)]:
            if budget <= 0:
                break
            start, end = sequence.fed, self._chunk_end(sequence.fed, len(sequence.prompt))
            last = len(sequence.prompt) - 1
            rows = [(sequence, sequence.prompt[i], i, i == last) for i in range(start, end)]
            sequence.fed = end
            budget -= end - start
            if not self._decode(rows):
                return
            if end - start > 1 and sequence.exact == start:
                sequence.exact = end

    def _decode(self, rows: list[tuple[Sequence, int, int, bool]]) -> bool:
        """Decode ``rows`` (sequence, token, position, wants logits) and sample where logits were asked for.

        The decode's time is charged to its sequences by their rows (a prompt chunk to its sequence, a generation
        step evenly over the sequences in it): the engine time the fair scheduler's cost model fits (issue 17).
        """
        batch = self.batch
        for i, (sequence, token, pos, logits) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence.slot
            batch.logits[i] = logits
        batch.n_tokens = len(rows)
        started = time.perf_counter()
        failed = lib.llama_decode(self.ctx, batch) != 0
        per_row = (time.perf_counter() - started) / len(rows)
        for sequence, *_ in rows:
            sequence.engine_s += per_row
        if failed:
            for sequence in list(self._running):  # a failed decode leaves the cache undefined: start over
                self._release(sequence, Event(error="llama.cpp could not decode the batch"))
            lib.llama_memory_clear(self.memory, True)
            self._kept = [[] for _ in range(self.n_seq)]
            return False
        for i, (sequence, _token, _pos, logits) in enumerate(rows):
            if logits and not sequence.cancelled:
                self._sample(sequence, i)
        return True

    def _sample(self, sequence: Sequence, row: int) -> None:
        if (
            sequence.greedy
        ):  # what the greedy sampler picks (the first highest logit), without copying them all
            logits = numpy.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
            token = int(logits.argmax())
        else:
            token = lib.llama_sampler_sample(sequence.sampler, self.ctx, row)
        n = lib.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        event = sequence.accept(
            token, self._piece.raw[: max(n, 0)], lib.llama_vocab_is_eog(self.vocab, token), self.n_ctx_seq
        )
        if sequence.done:
            self._release(sequence, event)
        elif event is not None:
            self._deliver(sequence, event)

    def _deliver(self, sequence: Sequence, event: Event, final: bool = False) -> None:
        """Queue ``event`` for its consumer, or merge it into the next one when the sequence holds its events.

        A request answered in one body (not streamed) needs its first event (time to first token) and its last;
        the ones between only keep its counters current. Merging them for ``hold_s`` spares the event loop a
        wake-up per step, which on a machine with as many cores as decoding threads takes a core from llama.cpp
        in the middle of a decode."""
        now = time.perf_counter()
        if not final and sequence.sent_at is not None and now - sequence.sent_at < sequence.hold_s:
            sequence.pending = event if sequence.pending is None else _merged(sequence.pending, event)
            return
        if sequence.pending is not None:
            event, sequence.pending = _merged(sequence.pending, event), None
        sequence.sent_at = now
        self._outbox.append((sequence, event))

    def _release(self, sequence: Sequence, event: Event | None) -> None:
        if sequence in self._running:
            self._running.remove(sequence)
            lib.llama_memory_seq_rm(self.memory, sequence.slot, sequence.exact, -1)
            self._kept[sequence.slot] = sequence.prompt[: sequence.exact]
            self._free.append(sequence.slot)
        if sequence.sampler:
            lib.llama_sampler_free(sequence.sampler)
            sequence.sampler = None
        sequence.done = True
        if event is not None:
            self._deliver(sequence, event, final=True)

    def _flush(self) -> None:
        """Hand the step's events to their event loops, one wake-up per loop and step: a wake-up per token
        would pull a core from llama.cpp's threads in the middle of each decode."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Callable[[Event], None], Event]]] = {}
        for sequence, event in self._outbox:
            by_loop.setdefault(sequence.loop, []).append((sequence.put, event))
        self._outbox.clear()
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
                loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list[tuple[Callable[[Event], None], Event]]) -> None:
    for put, event in items:
        put(event)


def sampler_chain(vocab: Any, sampling: Sampling) -> Any:
    """A sampler chain with llama-cpp-python's order: grammar, then greedy or top-k/top-p/min-p/temperature/seed."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if sampling.grammar is not None:
        grammar = lib.llama_sampler_init_grammar(vocab, sampling.grammar.encode(), b"root")
        if not grammar:
            lib.llama_sampler_free(chain)
            raise ValueError("llama.cpp could not parse the grammar")
        lib.llama_sampler_chain_add(chain, grammar)
    if sampling.temperature <= 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(TOP_K))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(MIN_P, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(sampling.temperature))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(sampling.seed))
    return chain
