"""text_filter: heuristic quality rules plus fastText language ID, each rule a knob.

Rules run cheapest first and the first one a row fails is its reject reason (so a 10 MB
text is rejected on length before anything scans it). Kept rows gain `lang_id`,
`lang_score` and `word_count`, so later selections can re-threshold without re-scoring.
Defaults follow the Gopher quality rules (Rae et al., 2021).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field

from gristmill.scoring import text_stats
from gristmill.scoring.language_id import LanguageIdentifier
from gristmill.stages.base import (
    STRING_TYPES,
    MapStage,
    Split,
    StageConfig,
    reject_schema,
    require_columns,
    split_by_reasons,
)


class TextFilterConfig(StageConfig):
    """Every threshold of every rule; None switches a rule off."""

    text_column: str = "text"
    min_chars: int | None = Field(default=1, ge=0)
    max_chars: int | None = Field(default=1_000_000, ge=1)
    min_words: int | None = Field(default=50, ge=0)
    max_words: int | None = Field(default=100_000, ge=1)
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_non_printable_fraction: float | None = Field(default=0.01, ge=0, le=1)
    max_duplicate_line_fraction: float | None = Field(default=0.30, ge=0, le=1)
    max_top_ngram_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_duplicate_ngram_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    languages: list[str] | None = Field(
        default_factory=lambda: ["en"], description="Keep these fastText codes; None keeps all")
    min_language_score: float = Field(default=0.65, ge=0, le=1)
    language_id_chars: int = Field(default=2000, ge=1, description="Characters fed to fastText")


class TextFilter(MapStage[TextFilterConfig]):
    name: ClassVar[str] = "text_filter"

    def setup(self) -> None:
        self._language_id = LanguageIdentifier(self.config.language_id_chars)

    def check_input(self, schema: pa.Schema) -> None:
        require_columns(schema, self.name, {self.config.text_column: STRING_TYPES})

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        added = {"lang_id": pa.string(), "lang_score": pa.float32(), "word_count": pa.int64()}
        base = [f for f in input_schema if f.name not in added]
        return pa.schema([*base, *(pa.field(n, t) for n, t in added.items())])

    def rejected_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """Rejects keep the statistics too: a language reject shows the language found."""
        return reject_schema(self.output_schema(input_schema))

    def process(self, batch: pa.Table) -> Split:
        texts = batch.column(self.config.text_column).to_pylist()
        reasons: list[str | None] = []
        details: list[str | None] = []
        langs: list[str | None] = []
        scores: list[float | None] = []
        counts: list[int | None] = []
        for text in texts:
            reason, detail, facts = self.judge(text)
            reasons.append(reason)
            details.append(detail)
            langs.append(facts.get("lang"))
            scores.append(facts.get("score"))
            counts.append(facts.get("words"))
        for name in ("lang_id", "lang_score", "word_count"):
            if name in batch.column_names:
                batch = batch.drop_columns([name])
        schema = self.output_schema(batch.schema)
        batch = (batch.append_column(schema.field("lang_id"), pa.array(langs, pa.string()))
                 .append_column(schema.field("lang_score"), pa.array(scores, pa.float32()))
                 .append_column(schema.field("word_count"), pa.array(counts, pa.int64())))
        return split_by_reasons(batch, reasons, details, self.name)

    def judge(self, text: str | None) -> tuple[str | None, str | None, dict[str, Any]]:
        """(reason, detail, facts) for one text; reason None means keep."""
        cfg = self.config
        if text is None:
            return "null_text", "text is null", {}
        if cfg.min_chars is not None and len(text) < cfg.min_chars:
            return "too_short", f"{len(text)} chars < min_chars {cfg.min_chars}", {}
        if cfg.max_chars is not None and len(text) > cfg.max_chars:
            return "too_long", f"{len(text)} chars > max_chars {cfg.max_chars}", {}
        tokens = text_stats.words(text)
        facts: dict[str, Any] = {"words": len(tokens)}
        if cfg.min_words is not None and len(tokens) < cfg.min_words:
            return "too_few_words", f"{len(tokens)} words < min_words {cfg.min_words}", facts
        if cfg.max_words is not None and len(tokens) > cfg.max_words:
            return "too_many_words", f"{len(tokens)} words > max_words {cfg.max_words}", facts
        mean = sum(map(len, tokens)) / len(tokens) if tokens else 0.0
        low, high = cfg.min_mean_word_length, cfg.max_mean_word_length
        if (low is not None and mean < low) or (high is not None and mean > high):
            return "mean_word_length", f"mean word length {mean:.2f} outside {low}..{high}", facts
        rule = self._repetition_or_noise(text, tokens)
        if rule is not None:
            return (*rule, facts)
        lang, score = self._language_id.identify(text)
        facts.update(lang=lang, score=score)
        if cfg.languages is not None and (lang not in cfg.languages
                                          or score < cfg.min_language_score):
            return "language", f"{lang} ({score:.2f}); wanted {cfg.languages} " \
                               f">= {cfg.min_language_score}", facts
        return None, None, facts

    def _repetition_or_noise(self, text: str, tokens: list[str]) -> tuple[str, str] | None:
        cfg = self.config
        if cfg.max_non_printable_fraction is not None:
            share = text_stats.non_printable_fraction(text)
            if share > cfg.max_non_printable_fraction:
                return "non_printable", f"{share:.3f} of characters are non-printable"
        if cfg.max_duplicate_line_fraction is not None:
            share = text_stats.duplicate_line_fraction(text)
            if share > cfg.max_duplicate_line_fraction:
                return "repetition", f"{share:.2f} of lines are duplicates"
        ngrams = text_stats.NgramIndex(tokens)
        for n, limit in sorted(cfg.max_top_ngram_fraction.items()):
            share = ngrams.top_ngram_char_fraction(n)
            if share > limit:
                return "repetition", f"top {n}-gram covers {share:.2f} of characters"
        duplicate_limits = sorted(cfg.max_duplicate_ngram_fraction.items())
        for index, (n, limit) in enumerate(duplicate_limits):
            share = ngrams.duplicate_ngram_char_fraction(n)
            if share > limit:
                return "repetition", f"repeated {n}-grams cover {share:.2f} of characters"
            if all(share <= later for _, later in duplicate_limits[index + 1:]):
                break
        return None
