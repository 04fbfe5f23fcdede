"""Multi-round chat over one KV cache: each round feeds only its new tokens.

inference.py --chat and demo.py keep asking about the same material without reading it again. With
a `StreamingCache` (--enable_streaming) the cache keeps attention sinks and a recent window, so the
conversation can run past the context window in bounded memory (StreamingLLM); with the default
cache it grows, and a round that would overflow the window is refused. A server with many
conversations bounds their caches with a `CachePool`: the least recently asked give theirs up and
read their tokens again when next asked.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig

from longctx.material import encode
from longctx.prompts import encode_prompt, render_conversation
from longctx.streaming import StreamingCache


@dataclass(frozen=True)
class ChatSettings:
    """How a conversation answers: at most `max_gen_len` new tokens per answer, sampled at `temperature`
    (0: greedy) with nucleus `top_p`, prompts in `template` (longctx.prompts), and with `streaming`
    (attention sinks, recent tokens) a StreamingCache instead of a growing one."""

    max_gen_len: int = 512
    temperature: float = 0.6
    top_p: float = 0.9
    template: str = "chat"
    streaming: tuple[int, int] | None = None


class ChatSession:
    """A conversation with `model`; `ask()` appends a user turn, generates the answer and returns it."""

    def __init__(self, model, tokenizer, window: int, settings: ChatSettings = ChatSettings()):
        self.model, self.tokenizer, self.template = model, tokenizer, settings.template
        self.window, self.max_gen_len, self.streaming = window, settings.max_gen_len, settings.streaming
        sampling = settings.temperature > 0
        self.generation_config = GenerationConfig(
            max_new_tokens=settings.max_gen_len,
            do_sample=sampling,
            temperature=settings.temperature if sampling else None,
            top_p=settings.top_p if sampling else None,
            num_beams=1,
            eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        self.cache = self._new_cache()
        self.messages: list[dict] = []
        self.history: list[int] = []  # every token given to or produced by the model, in order
        self.fed_text = ""  # the text of `history`

    def _new_cache(self):
        return StreamingCache(self.model, *self.streaming) if self.streaming else DynamicCache(config=self.model.config)

    def release_cache(self) -> None:
        """Drop the KV cache (memory); the next round reads the whole conversation again from its tokens."""
        self.cache = self._new_cache()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _new_text(self) -> str:
        """The rendered conversation beyond what the model has already seen."""
        full = render_conversation(self.tokenizer, self.messages, self.template)
        if full.startswith(self.fed_text):
            return full[len(self.fed_text) :]
        # a template that reformats earlier turns (e.g. trims answers): go on from the last common point
        previous = render_conversation(self.tokenizer, self.messages[:-1], self.template, add_generation_prompt=False)
        return full[len(os.path.commonprefix([previous, full])) :]

    @torch.no_grad()
    def _prefill(self, upto: int) -> None:
        """Streaming: feed history[seen:upto] in chunks of recent_size, so no forward holds more than the window."""
        chunk = self.streaming[1]
        while (seen := self.cache.get_seq_length()) < upto:
            ids = torch.tensor([self.history[seen : min(seen + chunk, upto)]], device=self.device)
            self.model(input_ids=ids, past_key_values=self.cache, use_cache=True)

    def ask(self, user_text: str, streamer=None) -> str:
        """One round: `user_text` as the next user turn; returns the answer (also streamed to `streamer`)."""
        if not user_text.strip():
            raise ValueError("the question is empty")
        self.messages.append({"role": "user", "content": user_text})
        new_text = self._new_text()
        # the first turn starts the prompt (BOS as the format wants); later turns continue it
        new_ids = encode(self.tokenizer, new_text) if self.history else encode_prompt(self.tokenizer, new_text, self.template)
        try:
            answer_ids = self.continue_with(new_ids, streamer)
        except ValueError:
            self.messages.pop()
            raise
        self.fed_text += new_text + self.tokenizer.decode(answer_ids)
        answer = self.tokenizer.decode(answer_ids, skip_special_tokens=True)
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def continue_with(self, new_ids: list[int], streamer=None) -> list[int]:
        """Feed `new_ids` after everything so far and generate; returns the answer's ids (for prompts of any format)."""
        if not self.streaming and len(self.history) + len(new_ids) + self.max_gen_len > self.window:
            raise ValueError(
                f"the conversation would reach {len(self.history) + len(new_ids):,} tokens plus --max_gen_len "
                f"{self.max_gen_len}, over the {self.window:,}-token window: start again with --enable_streaming"
            )
        self.history += new_ids
        if self.streaming:
            self._prefill(len(self.history) - 1)
        input_ids = torch.tensor([self.history], device=self.device)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            past_key_values=self.cache,
            generation_config=self.generation_config,
            streamer=streamer,
        )
        answer_ids = output[0, input_ids.shape[1] :].tolist()
        self.history += answer_ids
        return answer_ids

    def cached_tokens(self) -> int:
        """Tokens held in the KV cache now."""
        if isinstance(self.cache, StreamingCache):
            return self.cache.stored_length()
        return self.cache.get_seq_length()


class CachePool:
    """At most `capacity` conversations keep their KV cache; the least recently asked ones are released.

    A server holds one conversation per open session, each with a cache up to the window in size; the
    pool bounds their memory whatever the number of sessions. A released conversation reads its
    tokens again when it is next asked (`ChatSession.release_cache`), and gives the same answers.
    """

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError(f"the cache pool needs room for at least one conversation (got {capacity})")
        self.capacity = capacity
        self.recent: OrderedDict[int, weakref.ref] = OrderedDict()  # id -> conversation, least recent first
        self.lock = threading.Lock()

    def use(self, session: ChatSession) -> None:
        """Mark `session` as about to be asked; release the least recent caches beyond the capacity."""
        with self.lock:
            self.recent.pop(id(session), None)
            self.recent[id(session)] = weakref.ref(session)
            for key, ref in list(self.recent.items()):
                if ref() is None:  # the session's state was dropped (tab closed, timed out)
                    del self.recent[key]
            while len(self.recent) > self.capacity:
                _, ref = self.recent.popitem(last=False)
                if (oldest := ref()) is not None:
                    oldest.release_cache()

    def __len__(self) -> int:
        """Conversations holding a cache now."""
        with self.lock:
            return sum(ref() is not None for ref in self.recent.values())
