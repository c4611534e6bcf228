"""fortune(6) cookie files from Debian's `fortunes*` packages, in 12 languages.

Files are copied byte for byte: ingest decodes them and must see the ones that are not UTF-8
(fortunes-eo-iso3 ships the Esperanto proverbs in ISO-8859-3). Skipped: the `.dat` indexes,
symlinks (aliases such as cz/ -> cs/, and fortunes-it's top-level links) and empty files
(fortunes-pl's `.u8` placeholders). Packages put their files either at the top of
/usr/share/games/fortunes or in one language folder there; that folder is replaced by the
output folder below, and languages.json maps every copied file to its language.
"""

import json
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict

from gristmill.sources.debian import package_members
from gristmill.sources.errors import SourceFetchError

FORTUNE_ROOT = "/usr/share/games/fortunes"
LANGUAGES_FILE = "languages.json"
INDEX_SUFFIX = ".dat"


class FortunePackage(BaseModel):
    """One Debian package and where its files go: <folder>/ holds files in `lang`."""

    model_config = ConfigDict(frozen=True)

    package: str
    lang: str
    folder: str


PACKAGES: tuple[FortunePackage, ...] = (
    FortunePackage(package="fortunes", lang="en", folder="en"),
    FortunePackage(package="fortunes-bg", lang="bg", folder="bg"),
    FortunePackage(package="fortunes-br", lang="pt-br", folder="pt-br"),
    FortunePackage(package="fortunes-cs", lang="cs", folder="cs"),
    FortunePackage(package="fortunes-de", lang="de", folder="de"),
    FortunePackage(package="fortunes-eo", lang="eo", folder="eo"),
    FortunePackage(package="fortunes-eo-iso3", lang="eo", folder="eo-iso3"),
    FortunePackage(package="fortunes-es", lang="es", folder="es"),
    FortunePackage(package="fortunes-ga", lang="ga", folder="ga"),
    FortunePackage(package="fortunes-it", lang="it", folder="it"),
    FortunePackage(package="fortunes-pl", lang="pl", folder="pl"),
    FortunePackage(package="fortunes-ru", lang="ru", folder="ru"),
    FortunePackage(package="fortunes-zh", lang="zh", folder="zh"),
)


def _output_path(spec: FortunePackage, relative: PurePosixPath) -> str:
    inside = PurePosixPath(*relative.parts[1:]) if len(relative.parts) > 1 else relative
    return f"{spec.folder}/{inside.as_posix()}"


def _is_utf8(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _copy_package(
    spec: FortunePackage, dest: Path, languages: dict[str, str], counts: dict[str, int]
) -> None:
    for relative, member, content in package_members("fortunes", spec.package, FORTUNE_ROOT):
        if member.issym() or member.islnk():
            counts["links_skipped"] += 1
        elif content is None:
            continue
        elif relative.suffix == INDEX_SUFFIX:
            counts["index_files_skipped"] += 1
        elif not content:
            counts["empty_files_skipped"] += 1
        else:
            output = _output_path(spec, relative)
            if output in languages:
                raise SourceFetchError(
                    f"source 'fortunes': {spec.package} and another package both provide "
                    f"{output}; give one of them its own folder in fortunes.PACKAGES"
                )
            target = dest / output
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            languages[output] = spec.lang
            counts["files"] += 1
            counts["not_utf8_files"] += not _is_utf8(content)


def build(dest: Path) -> dict[str, int]:
    """Copy every package's fortune files and write languages.json."""
    languages: dict[str, str] = {}
    counts = dict.fromkeys(
        ("files", "not_utf8_files", "links_skipped", "index_files_skipped", "empty_files_skipped"),
        0,
    )
    for spec in PACKAGES:
        _copy_package(spec, dest, languages, counts)
    text = json.dumps(dict(sorted(languages.items())), indent=1, ensure_ascii=False)
    (dest / LANGUAGES_FILE).write_text(text + "\n", encoding="utf-8")
    return {**counts, "languages": len(set(languages.values()))}
