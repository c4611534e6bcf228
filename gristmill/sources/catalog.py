"""The catalog of sources: what each is, where its fetched files lie, how ingest reads it.

A source is what ingest reads; a dataset is what one fetch builds into data/<dataset>/.
Several sources can share a dataset (owt and owt_shuffled both come from data/owt/). This
module only finds fetched files; the builders that fetch them are in registry.py, so code
that reads sources (ingest, benchmarks for decontamination) never imports a fetcher.
"""

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from gristmill.sources.cache import dataset_dir, is_complete
from gristmill.sources.errors import SourceNotFetchedError, UnknownSourceError

BUILD_VERSIONS: dict[str, int] = {"openclipart": 2}
"""Bumped when a builder's output changes, so caches built by the old one are rebuilt."""


def build_version(dataset: str) -> int:
    return BUILD_VERSIONS.get(dataset, 1)


def is_fetched(dataset: str) -> bool:
    return is_complete(dataset, build_version(dataset))


class SourceSpec(BaseModel):
    """How ingest reads one source.

    format: `jsonl` (text under `text_field`, every other key a metadata column) or `fortune`
    (raw byte files of `%`-separated records, decoded by ingest; `text_field` names the column
    the records go to). files_glob selects the files inside data/<dataset>/.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    format: Literal["jsonl", "fortune"]
    text_field: str = "text"
    files_glob: str
    dataset: str
    languages_file: str | None = None

    @property
    def data_dir(self) -> Path:
        """Where the dataset's converted files live in the cache."""
        return dataset_dir(self.dataset)

    def file_metadata(self, path: Path | str) -> dict[str, str]:
        """Metadata that applies to a whole file, e.g. {'lang': 'de'} for a fortunes file."""
        if self.languages_file is None:
            return {}
        languages_path = self.data_dir / self.languages_file
        languages = json.loads(languages_path.read_text(encoding="utf-8"))
        file_path = Path(path)
        if file_path.is_absolute():
            file_path = file_path.relative_to(self.data_dir)
        key = file_path.as_posix()
        if key not in languages:
            raise ValueError(f"source '{self.name}': {key} is not listed in {languages_path}")
        return {"lang": languages[key]}


class ResolvedSource(BaseModel):
    """A fetched source: its spec and the concrete files ingest should read, sorted."""

    model_config = ConfigDict(frozen=True)

    spec: SourceSpec
    root: Path
    files: list[Path]


def _jsonl(name: str, description: str, files_glob: str, dataset: str | None = None) -> SourceSpec:
    return SourceSpec(
        name=name,
        description=description,
        format="jsonl",
        files_glob=files_glob,
        dataset=dataset or name,
    )


SOURCES: tuple[SourceSpec, ...] = (
    _jsonl(
        "brown", "Brown corpus: 500 documents of 1961 American English, 15 genres", "brown.jsonl"
    ),
    _jsonl(
        "spam_assassin",
        "SpamAssassin public corpus: 6,046 raw emails labelled ham or spam",
        "spam_assassin.jsonl",
    ),
    _jsonl("owt", "1,000 OpenWebText passages", "passages.jsonl"),
    _jsonl(
        "owt_shuffled",
        "10 sentence-shuffled copies of each OpenWebText passage (near duplicates)",
        "shuffled.jsonl",
        dataset="owt",
    ),
    _jsonl("wikipedia", "1,000 Wikipedia passages", "passages.jsonl"),
    _jsonl(
        "wikipedia_shuffled",
        "10 sentence-shuffled copies of each Wikipedia passage (near duplicates)",
        "shuffled.jsonl",
        dataset="wikipedia",
    ),
    _jsonl(
        "text_compression",
        "400 texts from 8 origins, from quotes and code to random characters",
        "samples.jsonl",
    ),
    _jsonl(
        "openclipart",
        "7,458 clip-art SVGs with titles, descriptions and keywords as noisy captions",
        "openclipart.jsonl",
    ),
    SourceSpec(
        name="openclipart_captions",
        description="1,382 clip-art images with a description: title + keywords as the raw "
                    "alt-text, the description as the sentence caption (for CapsFusion)",
        format="jsonl",
        files_glob="captions.jsonl",
        dataset="openclipart",
    ),
    _jsonl(
        "tuxpaint",
        "~950 Tux Paint stamps: a picture (PNG or SVG) and its short English caption",
        "tuxpaint.jsonl",
    ),
    _jsonl("gsm8k", "GSM8K math word problems, English, 100 templates", "gsm8k_en.jsonl"),
    _jsonl(
        "gsm8k_multilingual",
        "GSM8K math word problems in 109 languages, including unfinished translations",
        "gsm8k_all.jsonl",
        dataset="gsm8k",
    ),
    _jsonl("champ", "270 CHAMP competition math problems with answers and solutions",
           "champ_problems.jsonl"),
    _jsonl("champ_model_solutions", "Model solutions to CHAMP problems ending in \\boxed{}",
           "champ_model_solutions.jsonl", dataset="champ"),
    SourceSpec(
        name="fortunes",
        description="fortune(6) cookies in 12 languages, very imbalanced, one file not UTF-8",
        format="fortune",
        files_glob="*/**/*",
        dataset="fortunes",
        languages_file="languages.json",
    ),
)

_BY_NAME = {spec.name: spec for spec in SOURCES}


def list_sources() -> list[SourceSpec]:
    """Every registered source, in registry order."""
    return list(SOURCES)


def get_spec(name: str) -> SourceSpec:
    """The spec of a registered source, or UnknownSourceError listing the known names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(sorted(_BY_NAME))
        raise UnknownSourceError(f"unknown source '{name}'; known sources: {known}") from None


def datasets_for(names: list[str] | None = None) -> list[str]:
    """The datasets to build for some sources (all when None), each once, in registry order."""
    specs = list(SOURCES) if names is None else [get_spec(name) for name in names]
    return list(dict.fromkeys(spec.dataset for spec in specs))


def resolve(name: str) -> ResolvedSource:
    """The spec plus the sorted files of a fetched source."""
    spec = get_spec(name)
    if not is_fetched(spec.dataset):
        raise SourceNotFetchedError(
            f"source '{name}' is not fetched yet: run `make setup` or "
            f"`python -m gristmill.sources.fetch {name}`"
        )
    root = spec.data_dir
    files = sorted(path for path in root.glob(spec.files_glob) if path.is_file())
    return ResolvedSource(spec=spec, root=root, files=files)
