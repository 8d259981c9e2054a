"""A conversation's KV cache survives its engine replica: saved when the replica drains,
restored on the replica that takes the conversation over, so the follow-up turn's prefill
is only its new tokens. Real llama.cpp engines (the bundled SmolLM2) sharing one slot folder.

One pair of engines serves the module. The conversation is about 650 tokens (a ~1500-token
one is the benchmark's, ``benchmarks/llm/kv_restore.py``: its prefill alone takes tens of
seconds on this shared 2-core machine).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiscale.engines.llamacpp import LlamaCppBackend, slot_save_dir_of
from aiscale.engines.process import EngineHandle
from aiscale.llm.kv_store import KvStore
from tests.engines.conftest import LoopThread, smollm2_spec

COLOURS = ("red", "green", "blue", "amber", "violet", "teal", "ochre", "grey")
NOTES = " ".join(
    f"Item {i} is {COLOURS[i % len(COLOURS)]} and weighs {3 * i + 7} grams." for i in range(48)
)
CONVERSATION = [{"role": "user", "content": f"Here are my notes. {NOTES} Which item is heaviest?"}]


class Engines:
    """Engines A and B of one deployment, their backend (whose drain hook is the store's
    save) and the store, all on one event loop in a thread."""

    def __init__(self, loop: LoopThread, folder: Path) -> None:
        self.loop = loop
        spec = smollm2_spec(
            served_model_name="chat", parallel=2, context_window=1024, max_output_tokens=16,
            slot_save_dir=str(folder),
        )  # fmt: skip
        # The wiring a gateway does: the store in the engines' shared slot folder, first;
        # then the backend, with the store's save as its drain hook.
        self.kv = KvStore(slot_save_dir_of(spec), deployment="chat", min_tokens=128)
        self.backend = LlamaCppBackend(spec, on_drained=self.kv.save_engine)
        self.a, _ = loop.run(self.backend.spawn(0, num_replicas=2, lease=None))
        self.b, _ = loop.run(self.backend.spawn(1, num_replicas=2, lease=None))

    def chat(self, engine: EngineHandle, messages: list[dict[str, Any]], **extra: Any) -> Any:
        body = {"model": "chat", "messages": messages, "max_tokens": 8, "temperature": 0, **extra}
        answer = httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=110)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def close(self) -> None:
        for handle in (self.a, self.b):
            self.loop.run(self.backend.stop(handle, 10.0))
        self.loop.run(self.kv.aclose())


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    loop = LoopThread()
    pair = Engines(loop, tmp_path_factory.mktemp("kv"))
    try:
        yield pair
    finally:
        pair.close()
        loop.close()


def test_a_drained_engines_conversation_is_restored_where_it_continues(
    engines: Engines,
) -> None:
    """A answers a long first turn and is drained: the drain hook saves its slot (a 0600
    file and its hashes). The follow-up goes to B: the store restores the prefix into a free
    slot of B and hands the file over; B then computes only the new tokens of the turn."""
    first = engines.chat(engines.a, CONVERSATION)
    num_prompt = first["usage"]["prompt_tokens"]
    assert num_prompt > 500
    engines.loop.run(engines.backend.stop(engines.a, 30.0))  # drain A: the hook saves

    [saved] = engines.kv.entries()
    assert saved.num_tokens >= num_prompt
    path = engines.kv.folder / saved.file_name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["num_tokens"] == saved.num_tokens
    assert NOTES[:200] in meta["head"]  # the opening text, for the local check

    follow_up = [
        *CONVERSATION,
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "And the lightest?"},
    ]
    lookups = engines.kv.num_engine_lookups
    restored = engines.loop.run(engines.kv.restore(engines.b, messages=follow_up))
    assert restored is not None
    assert engines.kv.num_engine_lookups == lookups + 1  # passed the local check
    assert restored.num_tokens == saved.num_tokens
    assert restored.matched_chars >= 4 * 128
    assert engines.kv.num_entries == 0 and not path.exists()  # handed over

    second = engines.chat(engines.b, follow_up, id_slot=restored.slot_id)
    timings = second["timings"]
    assert timings["cache_n"] >= num_prompt  # the first turn was not computed again
    assert timings["prompt_n"] < 40  # only the answer's end and the new user turn
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == timings["cache_n"]


def test_a_restore_that_would_not_help_does_nothing(engines: Engines) -> None:
    """Nothing saved, a short chat, an unrelated conversation, or an engine that holds the
    conversation already: no restore (``None``); an entry is kept unless it is stale."""
    b = engines.b
    assert engines.kv.num_entries == 0
    assert engines.loop.run(engines.kv.restore(b, messages=CONVERSATION)) is None

    [saved] = engines.loop.run(engines.kv.save_engine(b))  # B holds the follow-up now
    short = [{"role": "user", "content": "Hi"}]
    assert engines.loop.run(engines.kv.restore(b, messages=short)) is None
    unrelated = [{"role": "user", "content": "Tell me about the sea. " * 60}]
    lookups = engines.kv.num_engine_lookups
    assert engines.loop.run(engines.kv.restore(b, messages=unrelated)) is None
    # Told apart by the saved text's opening, without a round trip to the engine: the
    # saved conversation does not contain this chat's first message.
    assert engines.kv.num_engine_lookups == lookups
    assert engines.kv.entries() == [saved]

    assert engines.loop.run(engines.kv.restore(b, prompt=_slot_texts(b)[0] + " more")) is None
    assert engines.kv.num_entries == 0  # B holds it: the saved copy was stale
    assert not (engines.kv.folder / saved.file_name).exists()


def test_the_store_is_bounded_and_outlives_a_restart(engines: Engines) -> None:
    """Past ``max_entries`` (or ``max_bytes``) the oldest entry goes, file and all; a new
    store on the same folder finds the entries a previous one saved, another deployment's
    store does not, and a saved file without its hashes is removed."""
    b = engines.b
    folder = engines.kv.folder
    tiny = KvStore(folder, deployment="chat", min_tokens=128, max_bytes=1)
    assert engines.loop.run(tiny.save_engine(b)) == []  # saved, then over the bound: gone
    assert tiny.num_entries == 0
    assert not list(folder.glob("kv-*.bin"))

    keeper = KvStore(folder, deployment="chat", min_tokens=128)
    [saved] = engines.loop.run(keeper.save_engine(b))
    assert engines.loop.run(keeper.save_engine(b)) == []  # already saved: skipped
    assert KvStore(folder, deployment="chat").entries() == [saved]
    assert KvStore(folder, deployment="other").entries() == []
    assert (folder / saved.file_name).exists()  # another deployment left it alone

    (folder / saved.file_name).with_suffix(".json").unlink()
    assert KvStore(folder, deployment="chat").entries() == []
    assert not (folder / saved.file_name).exists()
    few = KvStore(folder, deployment="chat", min_tokens=100_000)
    assert engines.loop.run(few.save_engine(b)) == []  # no slot holds that many tokens
    for store in (tiny, keeper, few):
        engines.loop.run(store.aclose())


def _slot_texts(engine: EngineHandle) -> list[str]:
    slots = httpx.get(f"{engine.url}/slots", timeout=10).json()
    return [s["prompt"] + s.get("generated", "") for s in slots if s.get("prompt")]
