"""Reading a TOML description (a machine, a model) with located errors.

`read_toml(text, filename, error)` parses the text and turns every way tomllib can fail (a
syntax error, its own limits on integers, arrays nested past Python's recursion limit) into
`error(message, span)`; `locate(text, filename, section, key)` is the span of a key (or of a
section's header) for the diagnostics of the values read from it. Lines are counted as the
diagnostics count them (`isa.errors.source_lines`).
"""

from __future__ import annotations

import functools
import re
import tomllib

from zhenwu.isa.errors import SourceSpan, source_lines


def read_toml(text: str, filename: str, error) -> dict:
    """The parsed TOML `text`; `error(message, span)` (a ZhenwuError class) when it is not."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = re.search(r"line (\d+), column (\d+)", str(err))
        span = SourceSpan(filename, int(match[1]), int(match[2]), text=text) if match else None
        raise error(f"malformed TOML: {err}", span) from None
    except ValueError as err:  # tomllib's own limits (an integer of 5000 digits)
        raise error(f"malformed TOML in {filename}: {err}", None) from None
    except RecursionError:  # tomllib recurses once per nested array
        raise error(f"malformed TOML in {filename}: arrays nested too deeply", None) from None


def locate(text: str, filename: str, section: str | None, key: str | None) -> SourceSpan:
    """The span of `key` in `[section]` (the top level when None) of the TOML text; the
    section's header when `key` is None; line 1 when neither is found."""
    found = _places(text).get((section, key))
    if found is None:
        return SourceSpan(filename, 1, 1, text=text)
    number, start, end = found
    if end is None:
        return SourceSpan(filename, number, start, text=text)
    return SourceSpan(filename, number, start, end_col=end, text=text)


_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]\s*(#.*)?")
_KEY = re.compile(r"\s*([^=]*?)\s*=")


@functools.lru_cache(maxsize=8)
def _places(text: str) -> dict:
    """(section, key) -> (line, first column, end column) of the first place each key is
    given, and (section, None) -> (line, 1, None) of each section's first header: one pass
    over the text, so that a reader asking where every key is does not scan it per key."""
    places: dict = {}
    current: str | None = None
    for number, line in enumerate(source_lines(text), start=1):
        header = _HEADER.fullmatch(line)
        if header:
            current = header[1]
            places.setdefault((current, None), (number, 1, None))
            continue
        match = _KEY.match(line)
        if match:
            places.setdefault((current, match[1]), (number, match.start(1) + 1,
                                                     match.end(1) + 1))
    return places
