"""text_filter: heuristic quality rules plus fastText language ID, each rule a knob.

Rules run cheapest first and the first one a row fails is its reject reason (so a 10 MB
text is rejected on length before anything scans it). Kept rows gain `lang_id`,
`lang_score` and `word_count`, so later selections can re-threshold without re-scoring.
Defaults follow the Gopher quality rules (Rae et al., 2021).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
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

TOKENIZE_BYTES = 4_000_000
"""Texts are cut into words this many bytes at a time: the word arrays of a 1024-row batch of
long documents stay a few MB, whatever the batch size."""


def byte_slices(texts: pa.Array | pa.ChunkedArray, budget: int) -> list[tuple[int, int]]:
    """(start, stop) row ranges of about `budget` bytes of text each (a longer text alone)."""
    sizes = pc.fill_null(pc.binary_length(texts), 0).to_numpy()
    slices, start, held = [], 0, 0
    for row, size in enumerate(sizes.tolist()):
        if held and held + size > budget:
            slices.append((start, row))
            start, held = row, 0
        held += size
    if start < len(sizes):
        slices.append((start, len(sizes)))
    return slices


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
        column = batch.column(self.config.text_column)
        verdicts: list[tuple[str | None, str | None, dict[str, Any]]] = []
        for start, stop in byte_slices(column, TOKENIZE_BYTES):
            verdicts.extend(self.judge_texts(column.slice(start, stop - start)))
        for name in ("lang_id", "lang_score", "word_count"):
            if name in batch.column_names:
                batch = batch.drop_columns([name])
        schema = self.output_schema(batch.schema)
        facts = [verdict[2] for verdict in verdicts]
        added = {"lang_id": [f.get("lang") for f in facts],
                 "lang_score": [f.get("score") for f in facts],
                 "word_count": [f.get("words") for f in facts]}
        for name, values in added.items():
            field = schema.field(name)
            batch = batch.append_column(field, pa.array(values, field.type))
        return split_by_reasons(batch, [v[0] for v in verdicts], [v[1] for v in verdicts],
                                self.name)

    def judge(self, text: str | None) -> tuple[str | None, str | None, dict[str, Any]]:
        """(reason, detail, facts) for one text; reason None means keep."""
        return self.judge_texts(pa.array([text], pa.string()))[0]

    def judge_texts(self, texts: pa.Array | pa.ChunkedArray,
                    ) -> list[tuple[str | None, str | None, dict[str, Any]]]:
        """A verdict per text. Texts outside the character limits are not cut into words."""
        cfg = self.config
        chars = pc.utf8_length(texts)
        within = pc.greater_equal(chars, cfg.min_chars or 0)
        if cfg.max_chars is not None:
            within = pc.and_(within, pc.less_equal(chars, cfg.max_chars))
        words = text_stats.word_table(pc.if_else(within, texts, pa.scalar(None, pa.string())))
        return [self._judge_row(text, words, row)
                for row, text in enumerate(texts.to_pylist())]

    def _judge_row(self, text: str | None, words: text_stats.WordTable, row: int,
                   ) -> tuple[str | None, str | None, dict[str, Any]]:
        cfg = self.config
        if text is None:
            return "null_text", "text is null", {}
        if cfg.min_chars is not None and len(text) < cfg.min_chars:
            return "too_short", f"{len(text)} chars < min_chars {cfg.min_chars}", {}
        if cfg.max_chars is not None and len(text) > cfg.max_chars:
            return "too_long", f"{len(text)} chars > max_chars {cfg.max_chars}", {}
        count = int(words.counts[row])
        facts: dict[str, Any] = {"words": count}
        if cfg.min_words is not None and count < cfg.min_words:
            return "too_few_words", f"{count} words < min_words {cfg.min_words}", facts
        if cfg.max_words is not None and count > cfg.max_words:
            return "too_many_words", f"{count} words > max_words {cfg.max_words}", facts
        mean = int(words.chars[row]) / count if count else 0.0
        low, high = cfg.min_mean_word_length, cfg.max_mean_word_length
        if (low is not None and mean < low) or (high is not None and mean > high):
            return "mean_word_length", f"mean word length {mean:.2f} outside {low}..{high}", facts
        rule = self._repetition_or_noise(text, words.ngrams(row))
        if rule is not None:
            return (*rule, facts)
        lang, score = self._language_id.identify(text)
        facts.update(lang=lang, score=score)
        if cfg.languages is not None and (lang not in cfg.languages
                                          or score < cfg.min_language_score):
            return "language", f"{lang} ({score:.2f}); wanted {cfg.languages} " \
                               f">= {cfg.min_language_score}", facts
        return None, None, facts

    def _repetition_or_noise(self, text: str,
                             ngrams: text_stats.NgramIndex) -> tuple[str, str] | None:
        cfg = self.config
        if cfg.max_non_printable_fraction is not None:
            share = text_stats.non_printable_fraction(text)
            if share > cfg.max_non_printable_fraction:
                return "non_printable", f"{share:.3f} of characters are non-printable"
        if cfg.max_duplicate_line_fraction is not None:
            share = text_stats.duplicate_line_fraction(text)
            if share > cfg.max_duplicate_line_fraction:
                return "repetition", f"{share:.2f} of lines are duplicates"
        for n, limit in sorted(cfg.max_top_ngram_fraction.items()):
            if ngrams.top_ngram_char_bound(n) <= limit:
                continue
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
