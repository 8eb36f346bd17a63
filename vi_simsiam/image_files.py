"""Image files that cannot be read: found before training by a scan, and never allowed to stop a run.

A scraped or copied image folder often holds a few files that are not images (an HTML error page
saved as .jpg), truncated downloads, or damaged files. ``scan`` opens every file with PIL and runs
its ``verify()`` (header and, for PNG, the checksums) in a thread pool; files that fail are reported
by name and, with ``bad_images="skip"`` (the default), left out of the data set; with ``"fail"`` the
run refuses to start. Damage that ``verify()`` cannot see (a JPEG cut short after its header) is met
when the image is decoded: ``load_or_substitute`` then warns with the file's name and gives the next
readable image of the set instead, so batches keep their size and a run its determinism.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from .errors import ConfigError

BAD_IMAGE_POLICIES = ("skip", "fail")
NAMED_IN_MESSAGES = 10  # files named in a warning or error; the rest are counted


def unreadable_reason(path: str) -> str | None:
    """None if PIL can open and verify the file, else why not (one line)."""
    try:
        with Image.open(path) as image:
            image.verify()
        return None
    except Exception as error:  # PIL raises many kinds (OSError, SyntaxError, ValueError, struct.error...)
        return f"{type(error).__name__}: {error}".splitlines()[0]


def scan(paths: list[str], workers: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) for every file of ``paths`` that PIL cannot read, in the order of ``paths``."""
    workers = workers or min(32, (os.cpu_count() or 1) * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(unreadable_reason, paths, chunksize=256))
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]


def describe(bad: list[tuple[str, str]]) -> str:
    named = "; ".join(f"{path} ({reason})" for path, reason in bad[:NAMED_IN_MESSAGES])
    more = f"; and {len(bad) - NAMED_IN_MESSAGES} more" if len(bad) > NAMED_IN_MESSAGES else ""
    return named + more


def apply_policy(root: Path, bad: list[tuple[str, str]], policy: str) -> None:
    """Warns about the unreadable files (skip) or refuses the data set (fail)."""
    if not bad:
        return
    if policy == "fail":
        raise ConfigError(
            f"{root}: {len(bad)} unreadable image file(s): {describe(bad)} "
            "(--bad-images skip leaves them out)"
        )
    warnings.warn(f"{root}: skipping {len(bad)} unreadable image file(s): {describe(bad)}", stacklevel=2)


def load_or_substitute(load, paths: list[str], index: int):
    """(image, index it came from): ``load(paths[index])``, or, if that file cannot be decoded, the
    next readable one (with a warning naming the bad file)."""
    for step in range(len(paths)):
        used = (index + step) % len(paths)
        path = paths[used]
        try:
            return load(path), used
        except Exception as error:  # decoding errors come as OSError, SyntaxError, ValueError...
            warnings.warn(f"unreadable image {path} ({type(error).__name__}: {error}); using the next one instead",
                          stacklevel=2)
    raise ConfigError(f"no image of this data set can be read (the first: {paths[index]})")
