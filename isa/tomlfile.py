"""Reading a TOML description (a machine, a model) with located errors.

`read_toml(text, filename, error)` parses the text and turns every way tomllib can fail (a
syntax error, its own limits on integers, arrays nested past Python's recursion limit) into
`error(message, span)`; `locate(text, filename, section, key)` is the span of a key (or of a
section's header) for the diagnostics of the values read from it. Lines are counted as the
diagnostics count them (`isa.errors.source_lines`).
"""

from __future__ import annotations

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
    current: str | None = None
    for number, line in enumerate(source_lines(text), start=1):
        header = re.fullmatch(r"\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]\s*(#.*)?", line)
        if header:
            current = header[1]
            if key is None and current == section:
                return SourceSpan(filename, number, 1, text=text)
            continue
        if key is not None and current == section:
            match = re.match(rf"\s*({re.escape(key)})\s*=", line)
            if match:
                return SourceSpan(filename, number, match.start(1) + 1,
                                  end_col=match.end(1) + 1, text=text)
    return SourceSpan(filename, 1, 1, text=text)
