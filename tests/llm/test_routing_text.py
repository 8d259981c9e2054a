"""The text a request is routed on, and its chain of block hashes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aiscale.llm.routing import routing_text_of_chat, routing_text_of_completion
from aiscale.llm.routing_text import prefix_chain

messages_st = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": st.text()}
    ),
    max_size=6,
)


@given(messages_st, st.text(), st.text())
def test_the_next_turn_extends_the_previous_turns_text(
    history: list[dict[str, Any]], answer: str, question: str
) -> None:
    """Turn N+1 (turn N's messages, the assistant's answer, a new user message) renders to a
    text that starts with turn N's text, and with turn N's text including the answer."""
    turn = [*history, {"role": "user", "content": question}]
    next_turn = [*turn, {"role": "assistant", "content": answer}, {"role": "user", "content": "?"}]
    text = routing_text_of_chat(turn)
    held = routing_text_of_chat(turn, answer=answer)
    following = routing_text_of_chat(next_turn)
    assert held.startswith(text)
    assert following.startswith(held)
    chain = prefix_chain(held, seed="chat")
    assert prefix_chain(following, seed="chat")[: len(chain)] == chain


def test_chat_rendering_is_canonical_and_tells_messages_apart() -> None:
    """Equal messages render equally whatever their key order; role, name, content parts and
    tool calls all count; odd shapes (None, numbers, mixed-key dicts) render, never raise."""
    a = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"b": 1, "a": 2}]}]
    b = [{"content": [{"text": "hi", "type": "text"}, {"a": 2, "b": 1}], "role": "user"}]
    assert routing_text_of_chat(a) == routing_text_of_chat(b)
    base = routing_text_of_chat([{"role": "user", "content": "hi"}])
    assert base == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    variants: list[list[dict[str, Any]]] = [
        [{"role": "system", "content": "hi"}],
        [{"role": "user", "name": "ann", "content": "hi"}],
        [{"role": "user", "content": "hi", "tool_calls": [{"id": "1"}]}],
        [{"role": "user", "content": "hi!"}],
    ]
    assert len({routing_text_of_chat(v) for v in variants} | {base}) == 5
    odd: list[dict[str, Any]] = [
        {"role": None, "content": None},
        {"role": 3, "content": 4.5},
        {"content": {1: "x", "k": "y"}},
        {"role": "user", "content": "\ud800 lone surrogate"},
    ]
    assert routing_text_of_chat(odd).endswith("<|im_start|>assistant\n")
    assert prefix_chain(routing_text_of_chat(odd) * 10, seed="chat")
    assert routing_text_of_completion("Once upon") == "Once upon"
    assert routing_text_of_completion("Once upon", answer=" a time") == "Once upon a time"


def test_chains_share_exactly_the_blocks_of_a_shared_prefix() -> None:
    """Two texts that agree on their first k full blocks share their first k hashes and no
    later one; a trailing partial block is not hashed; at most max_blocks are; the seed
    (deployment) separates otherwise equal texts."""
    common = "x" * 64 * 3
    one = prefix_chain(common + "a" * 64 + "tail", seed="chat")
    two = prefix_chain(common + "b" * 64 + "a" * 64, seed="chat")
    assert len(one) == 4 and len(two) == 5
    assert one[:3] == two[:3] and one[3] != two[3]
    # The chain is of prefixes: the same block content later in the text hashes differently.
    assert len(set(prefix_chain("x" * 64 * 5, seed="chat"))) == 5
    assert prefix_chain("short", seed="chat") == ()
    assert len(prefix_chain("y" * 64 * 300, seed="chat")) == 256
    assert len(prefix_chain("y" * 100, seed="chat", block_chars=10, max_blocks=4)) == 4
    assert prefix_chain(common, seed="chat") != prefix_chain(common, seed="other")


def test_routing_decisions_import_no_io_libraries() -> None:
    """The text, chain and choice modules are pure: importing them loads no Redis, web
    framework, database or cluster library."""
    code = (
        "import sys\n"
        "import aiscale.llm.routing_text, aiscale.llm.routing_choice\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('redis', 'starlette', 'sqlalchemy', 'ray', 'uvicorn', 'httpx'))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""
