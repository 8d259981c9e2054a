"""One simulated engine replica, step by step: continuous batching with chunked prefill, KV
admission, preemption and prefix reuse (the exact mode's engine).

The scheduler follows vLLM's (v1) with a whole-prompt KV reservation (v0's admission):

1. **Decode first.** Every running sequence that has its prompt prefilled decodes one token
   per step; each needs one more token of KV. When the cache cannot give it (after evicting
   cached prefixes), the most recently admitted running sequence is *preempted*: its KV is
   freed and it goes back to the head of the queue, to be prefilled again with what it had
   generated (vLLM's recompute preemption). Its client keeps the tokens it already got.
2. **Then prefill**, within the step's token budget (``max_batched_tokens`` minus the decode
   tokens): first the chunks of admitted sequences still prefilling, in admission order;
   then new sequences from the queue, first come first served, while the step has budget,
   the engine has a free sequence slot (``max_num_seqs``) and the KV cache can hold the whole
   prompt (keeping a ``watermark`` free). The queue's head blocks the rest (FCFS).
3. **Prefix reuse.** A finished sequence of a conversation leaves its KV in the cache
   (prompt and answer), least recently used first out when space is needed. The next turn of
   that conversation, admitted here, skips prefilling the tokens it repeats
   (``reusable_tokens``), up to one token short of its prompt (the last token is always
   computed, as in vLLM).
4. **Step time** is ``LlmProfile.step_s`` of what the step holds. At its end each decoding
   sequence has one more token; a sequence whose prefill completed gets its first token.

KV is counted in tokens (not pages): a sequence holds its context, prompt plus generated.
Per-sequence work is done only when a sequence joins, leaves or is preempted; a step costs
O(1) plus its prefill chunks (finish times come from a heap keyed by step number).

No clock, no I/O: the fleet simulator (``plan/llm/exact.py``) owns time and calls ``begin``
and ``end`` of each step.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from aiscale.plan.llm.profile import LlmProfile

__all__ = ["Engine", "EngineEvents", "Sequence"]


class Sequence:
    """One request inside the simulator (mutable; owned by one engine at a time)."""

    __slots__ = (
        "arrival_s",
        "decode_start_step",
        "first_token_s",
        "gen_at_start",
        "generated",
        "order",
        "output",
        "prompt",
        "reusable",
        "rid",
        "session",
        "todo",
        "version",
    )

    def __init__(
        self, rid: int, arrival_s: float, prompt: int, output: int, session: int, reusable: int
    ) -> None:
        self.rid = rid
        self.arrival_s = arrival_s
        self.prompt = prompt
        self.output = output
        self.session = session
        self.reusable = reusable
        self.generated = 0
        self.first_token_s: float | None = None
        self.todo = 0
        self.order = 0
        self.decode_start_step = 0
        self.gen_at_start = 0
        self.version = 0

    def context_at(self, step: int) -> int:
        """Tokens of context a decoding sequence holds after ``step`` steps of its engine."""
        return self.prompt + self.gen_at_start + (step - self.decode_start_step)


@dataclass(slots=True)
class EngineEvents:
    """What one step's end produced, for the fleet's records."""

    first_tokens: list[Sequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)
    num_decoded: int = 0


class Engine:
    """The scheduler state of one replica (module docstring)."""

    def __init__(self, profile: LlmProfile, *, watermark: float, is_prefix_caching: bool) -> None:
        self.profile = profile
        self.capacity = profile.kv_capacity_tokens
        self.admit_limit = int(profile.kv_capacity_tokens * (1.0 - watermark))
        self.is_prefix_caching = is_prefix_caching
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.decoding: dict[int, Sequence] = {}
        self._finish: list[tuple[int, int, int, Sequence]] = []
        self.kv_used = 0
        self.decode_context = 0
        self.step = 0
        self.cache: OrderedDict[int, int] = OrderedDict()
        self.cached_tokens = 0
        self.num_preemptions = 0
        self.num_prompt_tokens = 0
        self.num_cached_hits = 0
        self._order = 0
        self._chunks: list[tuple[Sequence, int]] = []
        self._num_decode = 0
        self._reserved = 0
        self.is_busy = False

    # ------------------------------------------------------------------ queries
    @property
    def num_running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def is_empty(self) -> bool:
        return not (self.waiting or self.prefilling or self.decoding)

    def kv_usage(self) -> float:
        return self.kv_used / self.capacity

    def cached_for(self, session: int) -> int:
        """Tokens of ``session``'s last context this engine still caches (0 if none)."""
        if session < 0 or not self.is_prefix_caching:
            return 0
        return self.cache.get(session, 0)

    # ------------------------------------------------------------------ steps
    def enqueue(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def take_waiting(self) -> list[Sequence]:
        """Remove and return every queued sequence (a draining engine hands them back)."""
        taken = list(self.waiting)
        self.waiting.clear()
        return taken

    def begin(self, now_s: float, max_wait_s: float, dropped: list[Sequence]) -> float | None:
        """Plan the next step; its duration in seconds, or ``None`` when there is nothing to
        do. Sequences that waited longer than ``max_wait_s`` are moved to ``dropped``."""
        self._make_room_for_decode()
        num_decode = len(self.decoding)
        self._reserved = num_decode  # this step's decode tokens: admission must leave them
        budget = self.profile.max_batched_tokens - num_decode
        chunks: list[tuple[Sequence, int]] = []
        prefill_tokens = 0
        prefill_context = 0.0
        for seq in self.prefilling:
            if budget <= 0:
                break
            chunk = min(seq.todo, budget)
            done = seq.prompt + seq.generated - seq.todo
            chunks.append((seq, chunk))
            prefill_tokens += chunk
            prefill_context += chunk * (done + (chunk - 1) / 2)
            budget -= chunk
        while budget > 0 and self.waiting and self.num_running < self.profile.max_num_seqs:
            seq = self.waiting[0]
            if now_s - seq.arrival_s > max_wait_s and seq.first_token_s is None:
                dropped.append(self.waiting.popleft())
                continue
            if not self._admit(seq):
                break
            self.waiting.popleft()
            chunk = min(seq.todo, budget)
            done = seq.prompt + seq.generated - seq.todo
            chunks.append((seq, chunk))
            prefill_tokens += chunk
            prefill_context += chunk * (done + (chunk - 1) / 2)
            budget -= chunk
        if num_decode == 0 and not chunks:
            self.is_busy = False
            return None
        self._chunks = chunks
        self._num_decode = num_decode
        self.is_busy = True
        return self.profile.step_s(num_decode, self.decode_context, prefill_tokens, prefill_context)

    def end(self, now_s: float) -> EngineEvents:
        """Apply the planned step at its end time ``now_s``."""
        events = EngineEvents(num_decoded=self._num_decode)
        self.step += 1
        self.kv_used += self._num_decode
        self.decode_context += self._num_decode
        while self._finish and self._finish[0][0] <= self.step:
            _, _, version, seq = heapq.heappop(self._finish)
            if version != seq.version or seq.rid not in self.decoding:
                continue
            del self.decoding[seq.rid]
            seq.generated = seq.output
            context = seq.prompt + seq.output
            self.kv_used -= context
            self.decode_context -= context
            self._release(seq.session, context)
            events.finished.append(seq)
        for seq, chunk in self._chunks:
            seq.todo -= chunk
            if seq.todo > 0:
                continue
            self.prefilling.remove(seq)
            seq.generated += 1  # the prefill's last position yields the next token (its KV
            # slot was reserved at admission)
            if seq.first_token_s is None:
                seq.first_token_s = now_s
                events.first_tokens.append(seq)
            if seq.generated >= seq.output:
                context = seq.prompt + seq.generated
                self.kv_used -= context
                self._release(seq.session, context)
                events.finished.append(seq)
                continue
            seq.decode_start_step = self.step
            seq.gen_at_start = seq.generated
            self.decode_context += seq.prompt + seq.generated
            self.decoding[seq.rid] = seq
            finish_step = self.step + (seq.output - seq.generated)
            heapq.heappush(self._finish, (finish_step, seq.order, seq.version, seq))
        self._chunks = []
        self.is_busy = False
        return events

    # ------------------------------------------------------------------ internals
    def _evict(self, needed: int, keep: int = -1, limit: int | None = None) -> None:
        """Drop least recently used cached prefixes (not ``keep``'s) until ``needed`` tokens
        fit beside what is in use, under ``limit`` tokens (default: the whole cache)."""
        limit = self.capacity if limit is None else limit
        while self.cache and self.kv_used + self.cached_tokens + needed > limit:
            session = next(iter(self.cache))
            if session == keep:
                if len(self.cache) == 1:
                    return
                self.cache.move_to_end(session)
                continue
            self.cached_tokens -= self.cache.pop(session)

    def _release(self, session: int, context: int) -> None:
        if session < 0 or not self.is_prefix_caching:
            return
        old = self.cache.pop(session, None)
        if old is not None:
            self.cached_tokens -= old
        self.cache[session] = context
        self.cached_tokens += context
        self._evict(0)

    def _admit(self, seq: Sequence) -> bool:
        """Reserve the whole context to prefill, and the token it will yield; ``False`` when
        that does not fit now."""
        context = seq.prompt + seq.generated + 1
        hit = 0
        cached = self.cached_for(seq.session)
        if cached and seq.generated == 0:
            hit = max(0, min(cached, seq.reusable, seq.prompt - 1))
        # The conversation's cached tokens become the sequence's own (the hit) or free.
        keep = seq.session if hit else -1
        own = cached if hit else 0
        self._evict(context - own + self._reserved, keep=keep, limit=self.admit_limit)
        free = self.admit_limit - self.kv_used - self.cached_tokens + own - self._reserved
        if context > free:
            return False
        if hit:
            self.cached_tokens -= self.cache.pop(seq.session)
        self.kv_used += context
        seq.todo = context - 1 - hit
        self._order += 1
        seq.order = self._order
        seq.version += 1
        if seq.generated == 0:
            self.num_prompt_tokens += seq.prompt
            self.num_cached_hits += hit
        self.prefilling.append(seq)
        return True

    def _make_room_for_decode(self) -> None:
        """Preempt the most recently admitted running sequences until every decoding one can
        grow by a token (module docstring, step 1)."""
        self._evict(len(self.decoding))
        while self.decoding and self.kv_used + len(self.decoding) > self.capacity:
            victim = max(
                (next(reversed(self.decoding.values())), *self.prefilling[-1:]),
                key=lambda s: s.order,
            )
            self._preempt(victim)
            self._evict(len(self.decoding))

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        if seq.rid in self.decoding:
            del self.decoding[seq.rid]
            generated = seq.gen_at_start + (self.step - seq.decode_start_step)
            context = seq.prompt + generated
            self.decode_context -= context
            self.kv_used -= context
            seq.generated = generated
        else:
            self.prefilling.remove(seq)
            self.kv_used -= seq.prompt + seq.generated + 1
        seq.version += 1
        seq.todo = 0
        self.waiting.appendleft(seq)
