"""An LLM as the judge of open-ended completions (Omni-Thinker's reward for creative writing).

Two modes, set by ``reward.judge.mode`` in the task YAML:

- ``pairwise`` (the default, Omni-Thinker's setup): the completion is compared with the
  item's reference answer (its demonstration, or ``reference_field``). Both orders are asked,
  completion first and reference first, because judges favour a position (FastChat's MT-Bench
  judge does the same; TRL's judges shuffle once instead, which hides the bias in noise). A
  win scores 1, a loss 0, a tie 0.5; the reward is the mean of the two orders. When the two
  orders contradict each other (the same position wins twice) the pair is counted as
  *inconsistent* in the judge's statistics.
- ``pointwise``: the judge rates the completion on a numeric scale (``scale: [lo, hi]``)
  against the reference; the first number in its reply, mapped to [0, 1].

The prompt ``template`` lives in the task YAML (placeholders: ``{prompt}`` and, pairwise,
``{first}`` / ``{second}``; pointwise ``{completion}`` and ``{reference}``), with an
optional ``system`` turn. An unparseable verdict scores ``unparseable_score`` (default 0.5,
the neutral outcome) and is counted. Optional line rules (``required_fields``, ``max_words``,
``match``, as the rubric judge reads them) gate the judge: a completion that breaks them
scores 0 without a call.

Replies are cached by (judge backend identity, the rendered conversation, max tokens), in
memory and, inside a run, in ``judge-cache.sqlite`` in the run folder: a run that stopped
because the endpoint went down resumes without asking again, and a local judge's greedy
verdicts are not recomputed for completions already seen (a collapsed policy repeats itself).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from ctbench.errors import UserError
from ctbench.scoring.judge_backends import (
    ChatBackend,
    ChatReply,
    Conversation,
    LocalModelBackend,
)
from ctbench.scoring.judges import LineRules
from ctbench.tracks.taskdata import Item

MODES = ("pairwise", "pointwise")
JUDGE_CACHE = "judge-cache.sqlite"  # in the run folder
ASK_CHUNK = 32  # conversations asked (and cached) together: two local batches of 16
_PLACEHOLDERS = {
    "pairwise": ("{prompt}", "{first}", "{second}"),
    "pointwise": ("{prompt}", "{completion}"),
}
_RULE_KEYS = ("required_fields", "max_words", "allowed_words", "match")
_KNOWN_KEYS = {
    "mode",
    "backend",
    "template",
    "system",
    "reference_field",
    "max_tokens",
    "scale",
    "unparseable_score",
    *_RULE_KEYS,
}

# Pairwise verdicts, most explicit first: MT-Bench's "[[A]]", then a reply that *starts* with
# the letter on its own ("A", "B.", "A)", "B is better"), then "Response A"/"Assistant B". A
# bare "A" followed by other words ("A good answer ...") is not read: it is the article.
_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_LEADING = re.compile(r"^\W*(A|B)(?:\s*$|\s*[.):,\]]|\s+(?:is|wins|was)\b)")
_NAMED = re.compile(r"\b(?:response|assistant|answer|output)\s+(A|B)\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_pairwise(reply: str) -> str | None:
    """``"first"``, ``"second"``, ``"tie"`` or None (unparseable) from a pairwise reply."""
    text = reply.strip()
    for pattern in (_BRACKETED, _LEADING, _NAMED):
        found = pattern.search(text)
        if found:
            letter = found.group(1).upper()
            return {"A": "first", "B": "second"}.get(letter, "tie")
    return None


def parse_rating(reply: str, low: float, high: float) -> float | None:
    """The first number of a pointwise reply mapped to [0, 1]; None when there is no number
    or it lies outside the scale (a judge that answers 12 on a 1-10 scale did not follow)."""
    found = _NUMBER.search(reply)
    if not found:
        return None
    value = float(found.group(0))
    if not low <= value <= high:
        return None
    return (value - low) / (high - low)


class Meter(Protocol):
    """What the judge needs of a run's compute meter (``ctbench.training.compute``, which
    comes after scoring in the package's flow): the phase being timed, and booking."""

    @property
    def active_phase(self) -> str | None: ...

    def book(self, phase: str, **amounts: float) -> None: ...


@dataclass
class JudgeStats:
    """What the judge did, recorded per task in a result: calls made, replies served from
    the cache, tokens, and how trustworthy its verdicts were."""

    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    judged: int = 0  # completions scored by the judge (gated ones excluded)
    gated: int = 0  # completions that broke the line rules: 0 without a call
    unparseable: int = 0  # replies with no verdict
    inconsistent: int = 0  # pairwise: the same position won in both orders


class VerdictCache:
    """Replies keyed by a hash of what produced them; memory first, an SQLite file once a
    run binds one. SQLite (stdlib) because each batch must be durable on its own: a run that
    stops mid-stage keeps every verdict it paid for.

    A resumed run redoes the stage it was stopped in, and the replies that stage had paid
    for come back from the file. Counted as cache hits, they would make the resumed run's
    judge calls (and compute) smaller than an uninterrupted run's. So the run records the
    file's last row at every commit (:meth:`high_water`), and :meth:`get` tells a reply
    stored by the stopped attempt (a row past that mark, not yet seen by this process) from
    a repeat: the caller books the former as the call it was."""

    def __init__(self) -> None:
        self.memory: dict[str, ChatReply] = {}
        self.db: sqlite3.Connection | None = None
        self.committed_rows: int | None = None  # None: every stored row counts as a repeat

    def open(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, text TEXT, "
            "prompt_tokens INTEGER, completion_tokens INTEGER)"
        )
        self.db.commit()

    def get(self, key: str) -> tuple[ChatReply, bool] | None:
        """The stored reply and whether it was paid for by an attempt this run is redoing
        (see the class docstring); None when it was never asked."""
        if key in self.memory:
            return self.memory[key], False
        if self.db is not None:
            row = self.db.execute(
                "SELECT text, prompt_tokens, completion_tokens, rowid FROM replies WHERE key = ?",
                (key,),
            ).fetchone()
            if row is not None:
                self.memory[key] = ChatReply(row[0], int(row[1]), int(row[2]))
                redone = self.committed_rows is not None and int(row[3]) > self.committed_rows
                return self.memory[key], redone
        return None

    def high_water(self) -> int:
        """The last row stored so far (0 for none, or without a file)."""
        if self.db is None:
            return 0
        return int(self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM replies").fetchone()[0])

    def put_many(self, entries: dict[str, ChatReply]) -> None:
        self.memory.update(entries)
        if self.db is not None and entries:
            with self.db:  # one transaction per batch
                self.db.executemany(
                    "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)",
                    [(k, r.text, r.prompt_tokens, r.completion_tokens) for k, r in entries.items()],
                )


class LLMJudge:
    """Scores completions by asking a chat model (see the module docstring)."""

    def __init__(self, params: dict[str, Any], where: str, backend: ChatBackend) -> None:
        unknown = sorted(set(params) - _KNOWN_KEYS)
        if unknown:
            raise UserError(
                f"unknown key(s) {unknown}; expected some of {sorted(_KNOWN_KEYS)}", where=where
            )
        self.mode = params.get("mode", "pairwise")
        if self.mode not in MODES:
            raise UserError(
                f"expected pairwise or pointwise, got {self.mode!r}", where=f"{where}.mode"
            )
        template = params.get("template")
        if not isinstance(template, str) or not template.strip():
            raise UserError(
                "expected the judge's prompt template (a string with "
                + ", ".join(_PLACEHOLDERS[self.mode])
                + ")",
                where=f"{where}.template",
            )
        missing = [p for p in _PLACEHOLDERS[self.mode] if p not in template]
        if missing:
            raise UserError(
                f"a {self.mode} template needs the placeholder(s) {missing}",
                where=f"{where}.template",
            )
        self.template = template
        system = params.get("system")
        if system is not None and not isinstance(system, str):
            raise UserError("expected a string", where=f"{where}.system")
        self.system = system
        self.reference_field = params.get("reference_field")
        self.max_tokens = params.get("max_tokens", 16)
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise UserError(
                f"expected a positive integer, got {self.max_tokens!r}", where=f"{where}.max_tokens"
            )
        scale = params.get("scale", [1, 10])
        if (
            not isinstance(scale, list)
            or len(scale) != 2
            or not all(isinstance(v, int | float) for v in scale)
            or scale[0] >= scale[1]
        ):
            raise UserError(
                f"expected [low, high] with low < high, got {scale!r}", where=f"{where}.scale"
            )
        self.scale = (float(scale[0]), float(scale[1]))
        unparseable = params.get("unparseable_score", 0.5)
        if not isinstance(unparseable, int | float) or not 0.0 <= unparseable <= 1.0:
            raise UserError(
                f"expected a number in [0, 1], got {unparseable!r}",
                where=f"{where}.unparseable_score",
            )
        self.unparseable_score = float(unparseable)
        rule_params = {k: params[k] for k in _RULE_KEYS if k in params}
        self.rules = LineRules.from_params(rule_params, where) if rule_params else None
        self.backend = backend
        self.identity = backend.identity()
        self.cache = VerdictCache()
        self.stats = JudgeStats()
        self.meter: Meter | None = None

    # -------------------------------------------------------------- run integration

    def bind(self, *, meter: Meter | None, cache_path: Path | None) -> None:
        """Book calls and tokens in a run's compute meter; keep replies in the run folder."""
        self.meter = meter
        if cache_path is not None:
            self.cache.open(cache_path)

    def restore_stats(self, saved: dict[str, Any]) -> None:
        """Statistics of the part of a run done before a resume (as :meth:`stats_json`
        wrote them)."""
        self.stats = JudgeStats(**{f.name: int(saved[f.name]) for f in fields(JudgeStats)})

    def resume_from(self, committed_rows: int | None) -> None:
        """Replies stored past row ``committed_rows`` of the cache file were paid for by the
        attempt being redone: book them as calls when met again (None: count none so)."""
        self.cache.committed_rows = committed_rows

    def cache_high_water(self) -> int:
        """What a run records at a commit, for :meth:`resume_from`."""
        return self.cache.high_water()

    def reset(self) -> None:
        """Verdicts depend only on their inputs; the cache stays valid across stages."""

    # -------------------------------------------------------------- scoring

    def reference(self, item: Item) -> str:
        if self.reference_field is not None:
            value = item.fields.get(self.reference_field)
            if value is None:
                raise UserError(
                    f"item {item.index} has no field {self.reference_field!r}",
                    where=f"task {item.task}: reward.judge.reference_field",
                )
            return str(value)
        if item.demonstration is None:
            raise UserError(
                f"item {item.index} has no demonstration to judge against; "
                "set reward.judge.reference_field",
                where=f"task {item.task}: reward.judge",
            )
        return item.demonstration

    def _conversation(self, **fields: str) -> Conversation:
        # str.replace, not str.format: completions contain braces (code, JSON) that format
        # would read as placeholders.
        text = self.template
        for name, value in fields.items():
            text = text.replace("{" + name + "}", value)
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": text})
        return messages

    def _key(self, conversation: Conversation) -> str:
        payload = {
            "backend": self.identity,
            "messages": conversation,
            "max_tokens": self.max_tokens,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _ask(self, conversations: list[Conversation]) -> list[ChatReply]:
        """Replies for every conversation: cached ones from the cache, the rest in chunks of
        ``ASK_CHUNK`` (duplicates asked once)."""
        keys = [self._key(c) for c in conversations]
        replies: dict[str, ChatReply] = {}
        redone: list[ChatReply] = []  # paid for by the stopped attempt of this stage
        # A conversation met twice in one batch counts as a hit only when its first
        # occurrence was one: asked afresh (or by the stopped attempt of this stage), its
        # repeat was served by that one call, as before the stop.
        hits: set[str] = set()
        for key in keys:
            if key in replies:
                self.stats.cached += key in hits
                continue
            found = self.cache.get(key)
            if found is None:
                continue
            replies[key], was_paid_before = found
            if was_paid_before:
                redone.append(replies[key])
            else:
                hits.add(key)
                self.stats.cached += 1
        self._book(redone)
        todo: dict[str, Conversation] = {}
        for key, conversation in zip(keys, conversations, strict=True):
            if key not in replies:
                todo.setdefault(key, conversation)
        pending = list(todo.items())
        # Asked and stored in chunks: an endpoint that goes down in the middle of a large
        # evaluation batch leaves every chunk answered before it in the cache.
        for start in range(0, len(pending), ASK_CHUNK):
            chunk = dict(pending[start : start + ASK_CHUNK])
            fresh = self.backend.complete(list(chunk.values()), max_tokens=self.max_tokens)
            new = dict(zip(chunk, fresh, strict=True))
            self.cache.put_many(new)
            replies.update(new)
            self._book(fresh)
        return [replies[k] for k in keys]

    def _book(self, replies: Sequence[ChatReply]) -> None:
        """Count paid calls in the judge's statistics and the run's compute."""
        if not replies:
            return
        prompt_tokens = sum(r.prompt_tokens for r in replies)
        completion_tokens = sum(r.completion_tokens for r in replies)
        self.stats.calls += len(replies)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        if self.meter is not None and self.meter.active_phase is not None:
            self.meter.book(
                self.meter.active_phase,
                judge_calls=len(replies),
                judge_tokens=prompt_tokens + completion_tokens,
            )

    def score_groups(
        self, items: Sequence[Item], groups: Sequence[Sequence[str]], *, training: bool
    ) -> list[list[float]]:
        scores = [[0.0] * len(g) for g in groups]
        jobs: list[tuple[int, int, Item, str]] = []
        for gi, (item, group) in enumerate(zip(items, groups, strict=True)):
            for ci, completion in enumerate(group):
                if self.rules is not None and not self.rules.is_valid(item, completion):
                    self.stats.gated += 1
                    continue
                jobs.append((gi, ci, item, completion))
        if not jobs:
            return scores
        self.stats.judged += len(jobs)
        if self.mode == "pointwise":
            conversations = [
                self._conversation(
                    prompt=item.prompt, completion=completion, reference=self.reference(item)
                )
                for _, _, item, completion in jobs
            ]
            for (gi, ci, _, _), reply in zip(jobs, self._ask(conversations), strict=True):
                rating = parse_rating(reply.text, *self.scale)
                if rating is None:
                    self.stats.unparseable += 1
                    rating = self.unparseable_score
                scores[gi][ci] = rating
            return scores
        conversations = []
        for _, _, item, completion in jobs:
            reference = self.reference(item)
            conversations.append(
                self._conversation(prompt=item.prompt, first=completion, second=reference)
            )
            conversations.append(
                self._conversation(prompt=item.prompt, first=reference, second=completion)
            )
        replies = self._ask(conversations)
        for j, (gi, ci, _, _) in enumerate(jobs):
            as_first = parse_pairwise(replies[2 * j].text)
            as_second = parse_pairwise(replies[2 * j + 1].text)
            outcomes = []
            for verdict, win in ((as_first, "first"), (as_second, "second")):
                if verdict is None:
                    self.stats.unparseable += 1
                    outcomes.append(self.unparseable_score)
                else:
                    outcomes.append(0.5 if verdict == "tie" else float(verdict == win))
            if as_first is not None and as_first == as_second and as_first != "tie":
                self.stats.inconsistent += 1
            scores[gi][ci] = sum(outcomes) / 2
        return scores

    def stats_json(self) -> dict[str, Any]:
        return {"backend": self.identity, "mode": self.mode, **asdict(self.stats)}


def llm_judges(rewards: Mapping[str, Any]) -> dict[str, LLMJudge]:
    """The LLM judges among a run's rewards by task (also inside an answer-extracting
    wrapper), which a run binds to its meter and cache."""
    found = {}
    for name, reward in rewards.items():
        inner = getattr(reward, "inner", reward)
        if isinstance(inner, LLMJudge):
            found[name] = inner
    return found


def build_backend(params: Any, where: str) -> ChatBackend:
    """The backend a judge's ``backend:`` mapping names: ``{local: {<model source>}}`` or
    ``{endpoint: {base_url, model, ...}}``."""
    if not isinstance(params, dict) or len(params) != 1:
        raise UserError(
            "expected exactly one of local: {<model source>} or endpoint: {base_url, model}",
            where=where,
        )
    ((kind, options),) = params.items()
    if not isinstance(options, dict):
        raise UserError("expected a mapping", where=f"{where}.{kind}")
    if kind == "local":
        return LocalModelBackend(options, f"{where}.local")
    if kind == "endpoint":
        # Imported here: the openai SDK is needed only by tasks judged through an endpoint.
        from ctbench.scoring.judge_endpoint import EndpointBackend

        return EndpointBackend(options, f"{where}.endpoint")
    raise UserError(f"expected local or endpoint, got {kind!r}", where=where)


def build_llm_judge(params: dict[str, Any], where: str) -> LLMJudge:
    """The LLM judge of a task's ``reward.judge`` mapping (``type: llm``)."""
    options = {k: v for k, v in params.items() if k != "type"}
    if "backend" not in options:
        raise UserError(
            "an llm judge needs backend: {local: {<model source>}} or "
            "{endpoint: {base_url, model}}",
            where=f"{where}.backend",
        )
    backend = build_backend(options.pop("backend"), f"{where}.backend")
    return LLMJudge(options, where, backend)
