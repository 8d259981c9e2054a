"""Conversations' KV cache kept across engine replicas: saved when a replica drains, restored
on the replica that takes the conversation over, instead of recomputing its prefill.

llama.cpp can write one slot's KV cache to a file and read it back into a slot of another
engine of the same model (``POST /slots/{id}?action=save|restore`` with a file name inside
the engine's ``slot_save_path``). ``KvStore`` keeps such files for one deployment in the
folder its engines share on this node (``LlamaCppBackend.slot_save_dir``), so a restore is a
hand-over of a file, never a copy:

* **save** (``save_engine``, the drain hook: ``LlamaCppBackend(spec, on_drained=...)``): once
  an engine has drained, every idle slot holding at least ``min_tokens`` is saved, keyed by
  the prefix hashes of the text it holds. ``/slots`` shows each slot's prompt and generated
  text (the backend starts engines with ``LLAMA_SERVER_SLOTS_DEBUG=1``).
* **restore** (``restore``, on the routing takeover): before a request goes to the engine the
  router chose, a local check first (no I/O): a chat can continue a saved conversation only
  if that conversation's text holds the chat's first non-system message, so unless some
  entry's opening text (``SavedPrefix.head``) contains that message's first
  ``PROBE_CHARS`` characters the request goes on at once. Every chat request passes here,
  and asking the engine to render each one costs a round trip through its HTTP thread on
  the time to first token (measured: +10-15 ms p50 on a 2-core machine with a few saved
  entries). What that check gives up: a saved entry that shares only a long system prompt
  with the request is not restored (any engine serving the deployment holds such a prompt
  anyway). Past the check, its prompt (a chat's messages rendered by that engine's own template,
  ``/apply-template``) is hashed the same way; the saved file sharing the longest prefix with
  it (at least ``4 * min_tokens`` characters) is restored into the engine's least valuable
  free slot, and its id is returned so the request can be pinned to it (``id_slot``). The
  file is handed over: removed from the store, since the conversation now lives there.

Keys are ``aiscale.llm.routing_text.prefix_chain`` hashes (64-character blocks, chained, so
one hash names a whole prefix), computed over the engine's own rendering of the text (its
chat template, with a leading BOS text stripped on both sides). The gateway's routing text
is a ChatML approximation that differs from it (SmolLM2's template adds a default system
prompt), so the store does not reuse the router's hashes; it is the same function on the
text the KV cache actually holds. Matching is only a choice of file: llama.cpp itself reuses
exactly the tokens the restored slot and the new prompt share.

Bounded: at most ``max_bytes`` of files and ``max_entries`` entries; the oldest go first (an
entry is used once, so least recently saved is least recently used). Files are 0600 in a
0700 folder; each has a ``.json`` beside it (its hashes), so the store outlives a restart of
the gateway. What it never does: decide routing, or touch files of another deployment (its
files carry the deployment's tag).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from aiscale.llm.routing_text import prefix_chain

__all__ = ["EngineTarget", "KvStore", "RestoredPrefix", "SavedPrefix"]

logger = logging.getLogger(__name__)

#: Characters per hashed block (the router's).
BLOCK_CHARS = 64
#: Blocks hashed at most: prompts are told apart by their first 64 KiB (about 16K tokens).
MAX_BLOCKS = 1024
#: How long a slot that received a restore is kept from the next restore (seconds): its
#: request is on its way (pinned with ``id_slot``).
RESTORE_HOLD_S = 10.0
#: Characters of a chat's first non-system message that a saved conversation must contain
#: before the engine is asked to render the chat (module docstring).
PROBE_CHARS = 256
#: Opening characters of each saved text kept in memory and in its ``.json`` for that check.
HEAD_CHARS = 16384
#: Deadline of one call to an engine on loopback (a save or restore moves tens of MB).
ENGINE_TIMEOUT = httpx.Timeout(30.0, connect=2.0)


class EngineTarget(Protocol):
    """An engine replica as the store calls it (``engines.process.EngineHandle`` is one)."""

    @property
    def url(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class SavedPrefix:
    """One saved slot: its file (in the store's folder) and the prefix it holds."""

    file_name: str
    num_tokens: int
    size_bytes: int
    #: ``prefix_chain`` of the text the slot held; the last hash names all of it.
    chain: tuple[str, ...]
    #: Wall-clock time of the save (a recorded timestamp, never used for intervals).
    saved_at: float
    #: The first ``HEAD_CHARS`` of the text the slot held (BOS stripped); ``None`` for an
    #: entry saved before heads were kept: it passes every local check.
    head: str | None = None


@dataclass(frozen=True, slots=True)
class RestoredPrefix:
    """A saved prefix now in ``slot_id`` of the engine: pin the request to it (``id_slot``)."""

    slot_id: int
    num_tokens: int
    #: Characters of the request's text that the restored file shares (whole blocks).
    matched_chars: int
    duration_s: float


class KvStore:
    """Saved KV prefixes of one deployment's conversations in ``folder`` on this node.

    ``deployment`` seeds the hashes and tags the files (two deployments sharing a folder
    never see each other's). ``min_tokens``: slots holding fewer are not worth a file.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        deployment: str,
        max_bytes: int = 2 << 30,
        max_entries: int = 256,
        min_tokens: int = 256,
    ) -> None:
        if max_bytes < 1 or max_entries < 1 or min_tokens < 1:
            raise ValueError("max_bytes, max_entries and min_tokens must be at least 1")
        self.folder = Path(folder)
        self.deployment = deployment
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.min_tokens = min_tokens
        self._tag = hashlib.blake2b(deployment.encode(), digest_size=4).hexdigest()
        self._entries: OrderedDict[str, SavedPrefix] = OrderedDict()  # oldest first
        #: prefix hash -> the files whose text has that prefix, the newest last.
        self._by_hash: dict[str, list[str]] = {}
        self._bos: dict[str, str] = {}  # engine url -> its BOS text ("" when none)
        #: (engine url, slot) -> when a prefix was restored there (``time.monotonic``).
        self._restored_at: dict[tuple[str, int], float] = {}
        self._client: httpx.AsyncClient | None = None
        #: Restores that went past the local check to the engine (tests, logs).
        self.num_engine_lookups = 0
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.folder.stat().st_mode & 0o077:
            self.folder.chmod(0o700)
        self._load()

    # ----- what callers read -------------------------------------------------------
    @property
    def num_entries(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self._entries.values())

    def entries(self) -> list[SavedPrefix]:
        """The saved prefixes, oldest first."""
        return list(self._entries.values())

    # ----- save ----------------------------------------------------------------------
    async def save_engine(self, engine: EngineTarget) -> list[SavedPrefix]:
        """Save every idle slot of ``engine`` that holds at least ``min_tokens`` (the drain
        hook: call it once the engine has no request, before it is stopped). Returns what
        was saved; a slot whose prefix is saved already is skipped. Engine errors are
        logged and end the save early (a drain must never fail because of it)."""
        try:
            slots = await self._slots(engine)
            bos = await self._bos_of(engine)
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("KV save: cannot read the slots of %s: %s", engine.url, exc)
            return []
        saved: list[SavedPrefix] = []
        for slot in slots:
            if slot.get("is_processing") or _num_cached(slot) < self.min_tokens:
                continue
            if "prompt" not in slot:
                logger.warning(
                    "KV save: %s does not show its slots' text (start it with "
                    "LLAMA_SERVER_SLOTS_DEBUG=1, as LlamaCppBackend does); nothing saved",
                    engine.url,
                )
                return saved
            text = _strip_bos(_slot_text(slot), bos)
            chain = self._chain(text, "")
            if not chain or chain[-1] in self._by_hash:
                continue
            try:
                entry = await self._save_slot(engine, int(slot["id"]), chain, text[:HEAD_CHARS])
            except (httpx.HTTPError, OSError, ValueError) as exc:
                logger.warning("KV save: slot %s of %s: %s", slot.get("id"), engine.url, exc)
                break
            if entry is not None:
                saved.append(entry)
        if saved:
            logger.info(
                "KV save: kept %d conversation(s) of %s (%d tokens, %.0f MB)",
                len(saved), engine.url, sum(e.num_tokens for e in saved),
                sum(e.size_bytes for e in saved) / 1e6,
            )
        return saved

    async def _save_slot(
        self, engine: EngineTarget, slot_id: int, chain: tuple[str, ...], head: str
    ) -> SavedPrefix | None:
        file_name = f"kv-{self._tag}-{chain[-1]}.bin"
        answer = await self._post(engine, f"/slots/{slot_id}?action=save", {"filename": file_name})
        if answer is None:
            return None
        path = self.folder / file_name
        entry = SavedPrefix(
            file_name=file_name,
            num_tokens=int(answer.get("n_saved") or 0),
            size_bytes=path.stat().st_size,
            chain=chain,
            saved_at=time.time(),
            head=head,
        )
        await asyncio.to_thread(_write_entry, path, entry)
        self._add(entry)
        await self._evict()
        return entry if entry.file_name in self._entries else None

    # ----- restore -------------------------------------------------------------------
    async def restore(
        self,
        engine: EngineTarget,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        prompt: str | None = None,
        template_fields: Mapping[str, Any] | None = None,
    ) -> RestoredPrefix | None:
        """Restore into a free slot of ``engine`` the saved prefix that shares the most with
        this request (a chat's ``messages``, with ``template_fields`` such as ``tools`` that
        its template renders, or a completion's ``prompt``), before the request is sent
        there. ``None`` (and no I/O at all while the store is empty or the request is short)
        when nothing saved shares ``4 * min_tokens`` characters with it, the engine holds it
        already, no slot is free, or the engine refuses; never raises for an engine's error.
        """
        if not self._entries:
            return None
        min_chars = 4 * self.min_tokens
        if prompt is None and _rough_chars(messages or ()) < min_chars // 2:
            return None
        if prompt is not None and len(prompt) < min_chars:
            return None
        if prompt is None and not self._might_continue(messages or ()):
            return None
        self.num_engine_lookups += 1
        started = time.monotonic()
        entry: SavedPrefix | None = None
        try:
            text = prompt if prompt is not None else await self._render(
                engine, messages or (), template_fields or {}
            )
            chain = self._chain(text, await self._bos_of(engine))
            entry, num_blocks = self._lookup(chain)
            if entry is None or num_blocks * BLOCK_CHARS < min_chars:
                return None
            # Handed over from here on: a concurrent request of the same conversation
            # must not restore it a second time.
            self._remove(entry.file_name)
            slots = await self._slots(engine)
            bos = await self._bos_of(engine)
            if any(
                _shared_blocks(chain, self._chain(_slot_text(s), bos)) >= num_blocks
                for s in slots if "prompt" in s and _num_cached(s) > 0
            ):
                await asyncio.to_thread(_delete_entry, self.folder, entry.file_name)
                return None  # the engine holds this conversation already
            slot_id = self._free_slot(engine.url, slots)
            if slot_id is None:
                self._add(entry)  # every slot busy: keep it for a later turn
                return None
            answer = await self._post(
                engine, f"/slots/{slot_id}?action=restore", {"filename": entry.file_name}
            )
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("KV restore on %s failed: %s", engine.url, exc)
            if entry is not None and entry.file_name not in self._entries:
                await asyncio.to_thread(_delete_entry, self.folder, entry.file_name)
            return None
        await asyncio.to_thread(_delete_entry, self.folder, entry.file_name)
        if answer is None:
            return None
        self._restored_at[(engine.url, slot_id)] = time.monotonic()
        restored = RestoredPrefix(
            slot_id=slot_id,
            num_tokens=int(answer.get("n_restored") or entry.num_tokens),
            matched_chars=num_blocks * BLOCK_CHARS,
            duration_s=time.monotonic() - started,
        )
        logger.info(
            "KV restore: %d tokens into slot %d of %s in %.3f s",
            restored.num_tokens, slot_id, engine.url, restored.duration_s,
        )
        return restored

    async def aclose(self) -> None:
        """Close the store's HTTP client (the files stay for the next run)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _free_slot(self, url: str, slots: Sequence[Mapping[str, Any]]) -> int | None:
        """The idle slot whose loss costs least: an empty one, else the one holding fewest
        tokens; ``None`` when every slot is busy. A slot restored in the last
        ``RESTORE_HOLD_S`` is taken only when no other is idle: llama.cpp shows a restored
        slot as empty until its request arrives."""
        now = time.monotonic()
        self._restored_at = {
            k: t for k, t in self._restored_at.items() if now - t < RESTORE_HOLD_S
        }
        idle = [s for s in slots if not s.get("is_processing")]
        if not idle:
            return None
        chosen = min(idle, key=lambda s: (
            (url, int(s["id"])) in self._restored_at, _num_cached(s), int(s["id"])
        ))  # fmt: skip
        return int(chosen["id"])

    # ----- the index -----------------------------------------------------------------
    def _might_continue(self, messages: Sequence[Mapping[str, Any]]) -> bool:
        """Whether a saved conversation may hold this chat (the local check of the module
        docstring): some entry's head contains the start of its first non-system message."""
        probe = _first_turn_probe(messages)
        if not probe:
            return True  # nothing to tell by: let the engine's rendering decide
        return any(e.head is None or probe in e.head for e in self._entries.values())

    def _chain(self, text: str, bos: str) -> tuple[str, ...]:
        text = _strip_bos(text, bos)
        return prefix_chain(
            text, seed=f"kv:{self.deployment}", block_chars=BLOCK_CHARS, max_blocks=MAX_BLOCKS
        )

    def _lookup(self, chain: Sequence[str]) -> tuple[SavedPrefix | None, int]:
        """The entry sharing the longest prefix with ``chain``, and how many blocks."""
        for index in range(len(chain) - 1, -1, -1):
            file_names = self._by_hash.get(chain[index])
            if file_names:
                return self._entries[file_names[-1]], index + 1
        return None, 0

    def _add(self, entry: SavedPrefix) -> None:
        self._entries[entry.file_name] = entry
        for block_hash in entry.chain:
            self._by_hash.setdefault(block_hash, []).append(entry.file_name)

    def _remove(self, file_name: str) -> None:
        entry = self._entries.pop(file_name, None)
        if entry is None:
            return
        for block_hash in entry.chain:
            file_names = self._by_hash.get(block_hash, [])
            if file_name in file_names:
                file_names.remove(file_name)
            if not file_names:
                self._by_hash.pop(block_hash, None)

    async def _evict(self) -> None:
        while self._entries and (
            len(self._entries) > self.max_entries or self.size_bytes > self.max_bytes
        ):
            oldest = next(iter(self._entries))
            self._remove(oldest)
            await asyncio.to_thread(_delete_entry, self.folder, oldest)

    def _load(self) -> None:
        """The entries a previous run left (their ``.json``); orphan files are removed."""
        prefix = f"kv-{self._tag}-"
        loaded: list[SavedPrefix] = []
        for meta in self.folder.glob(f"{prefix}*.json"):
            try:
                data = json.loads(meta.read_text())
                entry = SavedPrefix(
                    file_name=str(data["file_name"]),
                    num_tokens=int(data["num_tokens"]),
                    size_bytes=int(data["size_bytes"]),
                    chain=tuple(str(h) for h in data["chain"]),
                    saved_at=float(data["saved_at"]),
                    head=str(data["head"]) if data.get("head") is not None else None,
                )
            except (OSError, ValueError, KeyError, TypeError):
                meta.unlink(missing_ok=True)
                continue
            if entry.file_name != meta.with_suffix(".bin").name or not entry.chain:
                meta.unlink(missing_ok=True)
                continue
            loaded.append(entry)
        for entry in sorted(loaded, key=lambda e: e.saved_at):
            self._add(entry)
        for data_file in self.folder.glob(f"{prefix}*.bin"):
            if data_file.name not in self._entries:
                data_file.unlink(missing_ok=True)
        for entry in list(self._entries.values()):
            if not (self.folder / entry.file_name).is_file():
                self._remove(entry.file_name)
                _delete_entry(self.folder, entry.file_name)
        while self._entries and (
            len(self._entries) > self.max_entries or self.size_bytes > self.max_bytes
        ):
            oldest = next(iter(self._entries))
            self._remove(oldest)
            _delete_entry(self.folder, oldest)

    # ----- the engine ----------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=ENGINE_TIMEOUT)
        return self._client

    async def _slots(self, engine: EngineTarget) -> list[dict[str, Any]]:
        response = await self._http().get(f"{engine.url}/slots", headers=dict(engine.headers))
        response.raise_for_status()
        slots = response.json()
        if not isinstance(slots, list):
            raise ValueError(f"{engine.url}/slots is not a list")
        return [slot for slot in slots if isinstance(slot, dict) and "id" in slot]

    async def _bos_of(self, engine: EngineTarget) -> str:
        """The engine's BOS text (``/props``), stripped before hashing: the slot's text has
        it when the model adds one, a rendered chat template does not."""
        if engine.url not in self._bos:
            response = await self._http().get(f"{engine.url}/props", headers=dict(engine.headers))
            bos = response.json().get("bos_token") if response.status_code == 200 else None
            self._bos[engine.url] = bos if isinstance(bos, str) else ""
        return self._bos[engine.url]

    async def _render(
        self, engine: EngineTarget, messages: Sequence[Mapping[str, Any]],
        template_fields: Mapping[str, Any],
    ) -> str:
        """The prompt ``engine`` would build from ``messages`` (its own chat template)."""
        body = {**template_fields, "messages": list(messages)}
        response = await self._http().post(
            f"{engine.url}/apply-template", json=body, headers=dict(engine.headers)
        )
        response.raise_for_status()
        prompt = response.json().get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"{engine.url}/apply-template gave no prompt")
        return prompt

    async def _post(
        self, engine: EngineTarget, path: str, body: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The engine's JSON answer; ``None`` (logged) when it refuses."""
        response = await self._http().post(
            f"{engine.url}{path}", json=dict(body), headers=dict(engine.headers)
        )
        if response.status_code != 200:
            logger.warning("%s%s answered %d: %s", engine.url, path, response.status_code,
                           response.text[:300])  # fmt: skip
            return None
        answer = response.json()
        return answer if isinstance(answer, dict) else {}


def _strip_bos(text: str, bos: str) -> str:
    return text[len(bos):] if bos and text.startswith(bos) else text


def _first_turn_probe(messages: Sequence[Mapping[str, Any]]) -> str:
    """The first ``PROBE_CHARS`` characters of the first non-system message's text, trimmed
    (chat templates commonly trim contents); ``""`` when there is none."""
    for message in messages:
        if message.get("role") in ("system", "developer"):
            continue
        return _text_of(message.get("content")).strip()[:PROBE_CHARS]
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def _slot_text(slot: Mapping[str, Any]) -> str:
    return str(slot.get("prompt") or "") + str(slot.get("generated") or "")


def _num_cached(slot: Mapping[str, Any]) -> int:
    """Tokens a slot holds in its KV cache now (its text may be older: an erased slot keeps
    showing its last prompt, with ``n_prompt_tokens`` 0)."""
    return int(slot.get("n_prompt_tokens") or 0)


def _shared_blocks(first: Sequence[str], second: Sequence[str]) -> int:
    count = 0
    for left, right in zip(first, second, strict=False):
        if left != right:
            break
        count += 1
    return count


def _rough_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    """A cheap lower bound of a chat's rendered length (its text contents)."""
    return sum(len(_text_of(message.get("content"))) for message in messages)


def _write_entry(path: Path, entry: SavedPrefix) -> None:
    """The saved file made private, and its ``.json`` written beside it (atomically)."""
    os.chmod(path, 0o600)
    meta = path.with_suffix(".json")
    partial = path.with_suffix(".json.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump({**asdict(entry), "chain": list(entry.chain)}, out)
    os.replace(partial, meta)


def _delete_entry(folder: Path, file_name: str) -> None:
    (folder / file_name).unlink(missing_ok=True)
    (folder / file_name).with_suffix(".json").unlink(missing_ok=True)
