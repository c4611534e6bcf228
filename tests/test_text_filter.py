"""text_filter: every rule rejects with its own reason, and every rule can be switched off."""

from __future__ import annotations

import pyarrow as pa
import pytest

from gristmill.stages.base import StageInputError
from gristmill.stages.text_filter import TextFilter, TextFilterConfig

ENGLISH = (
    "The river rose slowly through the night, and by morning the farmers along the valley "
    "had moved their cattle to the higher fields. Nobody in the village could remember a "
    "flood like it since the old mill was built, and the children watched from the bridge "
    "as branches, fences and a small rowing boat drifted past toward the sea. By noon the "
    "water had started to fall again, leaving a thick layer of brown mud on every road."
)
GERMAN = (
    "Der Fluss stieg in der Nacht langsam an, und am Morgen hatten die Bauern im ganzen Tal "
    "ihr Vieh auf die höher gelegenen Felder gebracht. Niemand im Dorf konnte sich an ein "
    "solches Hochwasser erinnern, seit die alte Mühle gebaut worden war, und die Kinder "
    "sahen von der Brücke aus zu, wie Äste, Zäune und ein kleines Ruderboot vorbeitrieben."
)


@pytest.fixture(scope="module")
def text_filter() -> TextFilter:
    stage = TextFilter(TextFilterConfig())
    stage.setup()
    return stage


def reason(stage: TextFilter, text: str | None) -> str | None:
    return stage.judge(text)[0]


def test_clean_english_prose_is_kept_with_its_language(text_filter: TextFilter) -> None:
    verdict, _, facts = text_filter.judge(ENGLISH)
    assert verdict is None
    assert facts["lang"] == "en" and facts["score"] > 0.65


@pytest.mark.parametrize(("text", "expected"), [
    (None, "null_text"),
    ("", "too_short"),
    ("word " * 300_000, "too_long"),
    ("too few words here", "too_few_words"),
    (" ".join(["a"] * 60), "mean_word_length"),
    (ENGLISH.replace(" ", " \x00", 40), "non_printable"),
    ("\n".join([ENGLISH[:80]] * 10), "repetition"),
    (" ".join(["buy cheap pills now"] * 20), "repetition"),
    (GERMAN, "language"),
])
def test_each_rule_rejects_with_its_reason(text_filter: TextFilter, text: str | None,
                                           expected: str) -> None:
    assert reason(text_filter, text) == expected


def test_a_ten_megabyte_text_is_rejected_on_length_quickly(text_filter: TextFilter) -> None:
    verdict, detail, facts = text_filter.judge("x" * 10_000_000)
    assert verdict == "too_long"
    assert "10000000 chars" in detail
    assert facts == {}


def test_rules_switched_off_let_rows_through() -> None:
    permissive = TextFilter(TextFilterConfig(
        min_words=None, languages=None, max_duplicate_line_fraction=None,
        max_top_ngram_fraction={}, max_duplicate_ngram_fraction={}))
    permissive.setup()
    assert reason(permissive, "too few words here") is None
    assert reason(permissive, GERMAN) is None
    assert reason(permissive, "\n".join([ENGLISH[:80]] * 10)) is None


def test_process_keeps_scores_on_kept_and_rejected_rows(text_filter: TextFilter) -> None:
    batch = pa.table({"id": ["en", "de", "short"], "text": [ENGLISH, GERMAN, "hi"]})
    split = text_filter.process(batch)
    assert split.kept.column("id").to_pylist() == ["en"]
    assert split.kept.column("lang_id").to_pylist() == ["en"]
    rejected = split.rejected.to_pylist()
    assert [r["reject_reason"] for r in rejected] == ["language", "too_few_words"]
    assert rejected[0]["lang_id"] == "de"
    assert rejected[1]["word_count"] == 1
    assert split.rejected.schema.names[-3:] == ["reject_reason", "reject_detail",
                                                "reject_stage"]


def test_input_without_a_text_column_is_refused_before_any_work() -> None:
    stage = TextFilter(TextFilterConfig())
    with pytest.raises(StageInputError, match="missing column 'text'"):
        stage.check_input(pa.schema([("id", pa.string()), ("body", pa.string())]))
    with pytest.raises(StageInputError, match="column 'text' is int64"):
        stage.check_input(pa.schema([("text", pa.int64())]))
