"""Who answers "which response is better?": a local causal LM, or an OpenAI-compatible server.

Both backends read the same judge prompt: the constitution's principles, the user's request,
Response A and Response B. They differ in how the verdict comes back.

**Local** (``local:PATH``, PATH a checkpoint directory or ``tether:default``): no text is
generated. The assistant turn is pre-filled with ``Better response:`` and the verdict is the
more likely next token,

    score = log p(" A" | judge prompt) - log p(" B" | judge prompt)
    verdict = A if score > tie_margin, B if score < -tie_margin, else tie

so it is deterministic and can never fail to parse. (Tokens the two options share, such as a
separate space token, are appended to the prompt first; what is compared is the first token
where " A" and " B" differ.)

**OpenAI-compatible** (``openai:URL``): ``POST URL/v1/chat/completions`` with the model name,
temperature 0, and the API key read from an environment variable (none sent if it is unset).
The reply must contain exactly one ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie), FastChat's verdict
format; anything else is a parse failure, and the request is retried like a server error.
Connection errors, HTTP 429 and 5xx are retried with exponential backoff; other HTTP errors
(a wrong model name, a bad key) stop at once.

**Scripted** (``scripted:REWARD``, REWARD a reward name such as ``safety_refusal`` or
``package.module:function``): a rule stands in for the annotator. Each response is scored by the
reward function, with the item's metadata as dataset columns, and

    score = r(A) - r(B)        verdict = A if score > tie_margin, B if score < -tie_margin, else tie

It reads no constitution. Use it where no human or strong judge is at hand and the preference can
be written as a rule; the judgments record ``scripted:REWARD`` as the annotator's model.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from tether.data import encode_prompt
from tether.data.records import Message, Prompt
from tether.engine.progress import progress_bar
from tether.errors import ConfigError, TetherError
from tether.feedback.constitution import Constitution
from tether.models import evaluation_mode
from tether.rollout.sampler import positions_from_mask

Choice = Literal["A", "B", "tie"]

SYSTEM_PROMPT = ("You are an impartial judge. You compare two AI assistant responses to the same "
                 "user request by the principles below. Do not let the order of the responses, "
                 "their length, or the assistants' names influence you.")
LOCAL_INSTRUCTION = "Which response follows the principles better? Answer A or B."
LOCAL_PREFILL = "Better response:"
HTTP_INSTRUCTION = ("Which response follows the principles better? Explain briefly, then give "
                    "your verdict on the last line: [[A]] if Response A is better, [[B]] if "
                    "Response B is better, or [[C]] for a tie.")
VERDICT_PATTERN = re.compile(r"\[\[([ABC])\]\]")


@dataclass(frozen=True)
class JudgeRequest:
    """One ordered comparison: is ``response_a`` (shown first) or ``response_b`` better?"""

    prompt: Prompt
    response_a: str
    response_b: str
    columns: dict = field(default_factory=dict)  # the item's metadata (a scripted judge reads it)


@dataclass(frozen=True)
class BackendVerdict:
    """``choice`` None means the backend gave no usable verdict (HTTP: unparseable replies)."""

    choice: Choice | None
    raw: str  # the reply text (HTTP) or the score as text (local)
    score: float | None = None  # local: log p(A) - log p(B)


class JudgeBackend(Protocol):
    name: str  # recorded as the annotator's model in reports

    def judge(self, requests: Sequence[JudgeRequest], constitution: Constitution, *,
              progress: bool = True) -> list[BackendVerdict]: ...


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"


def judge_messages(request: JudgeRequest, constitution: Constitution, instruction: str, *,
                   max_chars: int = 2000) -> list[Message]:
    """The chat a judge reads. Long texts are clipped to ``max_chars`` each, so one rambling
    candidate cannot push the other out of a small model's context."""
    principles = "\n".join(f"- {p.text}" for p in constitution.principles)
    user = (f"Principles:\n{principles}\n\n"
            f"[User request]\n{_clip(_prompt_text(request.prompt), max_chars)}\n\n"
            f"[Response A]\n{_clip(request.response_a, max_chars)}\n\n"
            f"[Response B]\n{_clip(request.response_b, max_chars)}\n\n{instruction}")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# ---- local causal LM --------------------------------------------------------------------------

class LocalJudge:
    """Verdicts from next-token log-probabilities of a local causal LM (see module docstring)."""

    def __init__(self, model, tokenizer, *, name: str = "local", batch_size: int = 4,
                 tie_margin: float = 0.0, max_chars: int = 1500):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.batch_size, self.tie_margin, self.max_chars = batch_size, tie_margin, max_chars
        self.prefill_ids = tokenizer.encode(LOCAL_PREFILL, add_special_tokens=False)
        option_a = tokenizer.encode(" A", add_special_tokens=False)
        option_b = tokenizer.encode(" B", add_special_tokens=False)
        shared = 0
        while shared < min(len(option_a), len(option_b)) and option_a[shared] == option_b[shared]:
            shared += 1
        self.shared_ids = option_a[:shared]
        if shared >= min(len(option_a), len(option_b)):
            raise ConfigError("this tokenizer encodes ' A' and ' B' with no differing token")
        self.token_a, self.token_b = option_a[shared], option_b[shared]

    def _encode(self, request: JudgeRequest, constitution: Constitution) -> list[int]:
        messages = judge_messages(request, constitution, LOCAL_INSTRUCTION, max_chars=self.max_chars)
        return encode_prompt(messages, self.tokenizer) + self.prefill_ids + self.shared_ids

    @torch.no_grad()
    def scores(self, requests: Sequence[JudgeRequest], constitution: Constitution, *,
               progress: bool = True) -> list[float]:
        """log p(A) - log p(B) per request, batched with left padding."""
        encoded = [self._encode(request, constitution) for request in requests]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding
        results = [0.0] * len(encoded)
        pad = self.tokenizer.pad_token_id or 0
        device = self.model.device
        with evaluation_mode(self.model):
            with progress_bar("judge", len(encoded), enabled=progress) as bar:
                for start in range(0, len(order), self.batch_size):
                    rows = order[start:start + self.batch_size]
                    width = max(len(encoded[i]) for i in rows)
                    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
                    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
                    for row, i in enumerate(rows):
                        ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                        mask[row, width - len(encoded[i]):] = 1
                    ids, mask = ids.to(device), mask.to(device)
                    logits = self.model(input_ids=ids, attention_mask=mask,
                                        position_ids=positions_from_mask(mask), use_cache=False,
                                        logits_to_keep=1).logits[:, -1].float()  # (B, V)
                    logprobs = logits.log_softmax(dim=-1)
                    difference = logprobs[:, self.token_a] - logprobs[:, self.token_b]  # (B,)
                    for row, i in enumerate(rows):
                        results[i] = float(difference[row])
                    bar.advance(len(rows))
        return results

    def judge(self, requests: Sequence[JudgeRequest], constitution: Constitution, *,
              progress: bool = True) -> list[BackendVerdict]:
        verdicts = []
        for score in self.scores(requests, constitution, progress=progress):
            choice: Choice = ("A" if score > self.tie_margin else "B" if score < -self.tie_margin
                              else "tie")
            verdicts.append(BackendVerdict(choice, f"logp(A)-logp(B)={score:.4f}", score))
        return verdicts


# ---- OpenAI-compatible HTTP endpoint ------------------------------------------------------------

def parse_verdict(text: str) -> Choice | None:
    """The verdict in a reply: exactly one [[A]] / [[B]] / [[C]] (tie) marker, else None."""
    found = VERDICT_PATTERN.findall(text)
    if len(found) != 1:
        return None
    return {"A": "A", "B": "B", "C": "tie"}[found[0]]


def chat_completions_url(base_url: str) -> str:
    """``http://host:8000`` or ``http://host:8000/v1`` -> ``.../v1/chat/completions``."""
    base = base_url.rstrip("/")
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


class OpenAIJudge:
    """Verdicts from any server speaking OpenAI's ``/v1/chat/completions`` (vLLM, llama.cpp,
    a hosted API). The key comes from the environment variable ``api_key_env``."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 max_retries: int = 3, backoff: float = 1.0, timeout: float = 120.0,
                 max_tokens: int = 512, max_chars: int = 4000, client=None):
        import httpx

        if not model:
            raise ConfigError("the openai backend needs a model name (--model NAME)")
        self.url, self.model, self.name = chat_completions_url(base_url), model, model
        self.max_retries, self.backoff = max_retries, backoff
        self.max_tokens, self.max_chars = max_tokens, max_chars
        headers = {}
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = client or httpx.Client(timeout=timeout, headers=headers)

    def _post(self, messages: list[Message]) -> str:
        import httpx

        body = {"model": self.model, "messages": messages, "temperature": 0.0,
                "max_tokens": self.max_tokens}
        last_problem, unparsed = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.client.post(self.url, json=body)
            except httpx.TransportError as error:
                last_problem = f"{type(error).__name__}: {error}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last_problem = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                raise TetherError(f"{self.url} answered HTTP {response.status_code}: "
                                  f"{response.text[:300]}")
            try:
                text = response.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                last_problem = f"a reply without choices[0].message.content: {response.text[:200]}"
                continue
            if parse_verdict(text) is not None:
                return text
            unparsed = text
        if unparsed is not None:
            return unparsed  # the caller records it as a failed verdict
        raise TetherError(f"{self.url} failed {self.max_retries + 1} times: {last_problem}")

    def judge(self, requests: Sequence[JudgeRequest], constitution: Constitution, *,
              progress: bool = True) -> list[BackendVerdict]:
        verdicts = []
        with progress_bar("judge", len(requests), enabled=progress) as bar:
            for request in requests:
                text = self._post(judge_messages(request, constitution, HTTP_INSTRUCTION,
                                                 max_chars=self.max_chars))
                verdicts.append(BackendVerdict(parse_verdict(text), text))
                bar.advance()
        return verdicts


class ScriptedJudge:
    """A reward function as the annotator (see the module docstring)."""

    def __init__(self, reward: str, *, tie_margin: float = 1e-3):
        from tether.rewards.resolve import resolve_reward

        self.reward, self.fn, self.tie_margin = reward, resolve_reward(reward), tie_margin
        self.name = f"scripted:{reward}"

    def judge(self, requests: Sequence[JudgeRequest], constitution: Constitution, *,
              progress: bool = True) -> list[BackendVerdict]:
        if not requests:
            return []
        keys = sorted({key for request in requests for key in request.columns})
        columns = {key: [request.columns.get(key) for request in requests] * 2 for key in keys}
        prompts = [request.prompt for request in requests] * 2
        responses = [request.response_a for request in requests] + [request.response_b for request in requests]
        from tether.rewards.base import call_reward, trl_completions

        try:
            rewards = list(call_reward(self.fn, prompts, trl_completions(prompts, responses), columns))
        except Exception as error:
            raise TetherError(f"scripted judge {self.reward!r} failed: {error}") from error
        if len(rewards) != len(responses) or any(r is None for r in rewards):
            raise TetherError(f"scripted judge {self.reward!r} must score every response "
                              f"(got {len(rewards)} values for {len(responses)}, None not allowed)")
        verdicts = []
        for reward_a, reward_b in zip(rewards[:len(requests)], rewards[len(requests):]):
            score = float(reward_a) - float(reward_b)
            choice = "A" if score > self.tie_margin else "B" if score < -self.tie_margin else "tie"
            verdicts.append(BackendVerdict(choice, f"{float(reward_a):.4f} vs {float(reward_b):.4f}", score))
        return verdicts


def backend_from_spec(spec: str, *, model: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                      batch_size: int = 4, tie_margin: float | None = None):
    """``local:PATH`` (PATH may be ``tether:default``), ``openai:URL`` or ``scripted:REWARD``.

    ``tie_margin``: score differences within it are ties (local: log-prob units, default 0;
    scripted: reward units, default 1e-3); the HTTP judge states ties itself."""
    kind, _, target = spec.partition(":")
    if kind == "local" and target:
        from tether.feedback.generate import load_named_model

        name, judge_model, tokenizer = load_named_model(target)
        return LocalJudge(judge_model, tokenizer, name=name, batch_size=batch_size, tie_margin=tie_margin or 0.0)
    if kind == "openai" and target:
        return OpenAIJudge(target, model or "", api_key_env=api_key_env)
    if kind == "scripted" and target:
        return ScriptedJudge(target) if tie_margin is None else ScriptedJudge(target, tie_margin=tie_margin)
    raise ConfigError(f"unknown judge backend {spec!r}; use local:PATH (e.g. local:tether:default), "
                      "openai:URL (e.g. openai:http://localhost:8000) or scripted:REWARD "
                      "(e.g. scripted:safety_refusal)")
