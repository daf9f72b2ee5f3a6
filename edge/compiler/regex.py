# Regular expressions of the configuration (StringMatch regex, uriRegexRewrite). Envoy matches them with RE2,
# and so do the workers (workers/regex.py, google-re2): the table carries every pattern exactly as written,
# once RE2 itself has accepted it here (regex_problem).
#
# Rules:
# - RE2 decides what is valid, with Istio's length limit (MAX_REGEX_CHARS); nothing is rewritten for matching.
# - translate_re2 (RE2 → Python `re` syntax) only supplies the words when RE2 refuses a pattern: its reason
#   names the construct (look-arounds, back-references, nested repetition, \p classes, …) where RE2 says
#   "invalid perl operator". Translated: \z, \Q…\E, \x{…}, (?<name>…), POSIX classes, inline flags.
#   Rejected: what RE2 rejects but Python would accept (look-arounds, back-references, possessive and nested
#   repetition, \Z, …) and what Python cannot do (\p Unicode classes, ungreedy mode (?U)).
# - A rewrite substitution (`\1`) is translated to Python's template syntax (`\g<1>`): the workers substitute
#   through the RE2 binding's re-compatible sub, which takes Python's templates.
# - google-re2 is imported with the first regex: a config without one never loads it.
from __future__ import annotations

import functools
import re

MAX_REGEX_CHARS = 1024  # Istio's approximation of Envoy's re2.max_program_size
RE2_MAX_REPEAT = 1000

_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": r"\x00-\x7f", "blank": r"\t ", "cntrl": r"\x00-\x1f\x7f",
    "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~", "punct": r"!-/:-@\[-`{-~",
    "space": r"\t\n\v\f\r ", "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}
_COUNTED_REPEAT = re.compile(r"\{(\d+)(?:(,)(\d*))?\}")
_FLAG_GROUP = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])")


class RegexError(ValueError):
    pass


@functools.lru_cache(maxsize=4096)
def regex_problem(pattern: str) -> str | None:
    """Why Envoy would refuse a regex, or None. RE2 decides (the workers match with it); when RE2 refuses,
    translate_re2's reason is given where it has one, because it names the construct in words (look-arounds,
    backreferences, …) where RE2 says "invalid perl operator"."""
    if pattern == "":
        return "regex string match should not be empty"
    if len(pattern) > MAX_REGEX_CHARS:
        return f"regex is too large, max length allowed is {MAX_REGEX_CHARS}"
    import re2  # with the first regex: a config without one never loads it

    try:
        re2.compile(pattern, _re2_options())
    except re2.error as exc:
        try:
            translate_re2(pattern)
        except RegexError as reason:
            return str(reason)
        detail = exc.args[0] if exc.args else exc
        return detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    return None


def regex_groups(pattern: str) -> int:
    """Capturing groups of an accepted pattern (regex_problem returned None)."""
    import re2

    return re2.compile(pattern, _re2_options()).groups


@functools.lru_cache(maxsize=1)
def _re2_options():
    import re2

    options = re2.Options()
    options.log_errors = False  # a refused pattern is a diagnostic, not a line on stderr
    return options


@functools.lru_cache(maxsize=4096)
def translate_re2(pattern: str) -> str:
    """RE2 pattern → equivalent Python pattern; raises RegexError with the reason it cannot be used."""
    if pattern == "":
        raise RegexError("regex string match should not be empty")
    if len(pattern) > MAX_REGEX_CHARS:
        raise RegexError(f"regex is too large, max length allowed is {MAX_REGEX_CHARS}")
    out: list[str] = []
    pending = [0]  # per open group: scoped flag groups opened inside it that must close with it
    i, n = 0, len(pattern)
    quantified = 0  # 0: last token is an atom; 1: it was repeated; 2: repeated lazily
    at_start = True
    while i < n:
        c = pattern[i]
        if c == "\\":
            i, text = _translate_escape(pattern, i)
            out.append(text)
            quantified, at_start = 0, False
            continue
        if c == "[":
            i, text = _translate_class(pattern, i)
            out.append(text)
            quantified, at_start = 0, False
            continue
        if c == "(":
            if pattern.startswith("(?", i):
                i, at_start = _translate_group_open(pattern, i, out, pending, at_start)
            else:
                out.append("(")
                pending.append(0)
                i += 1
                at_start = False
            quantified = 0
            continue
        at_start = False
        if c == ")":
            if len(pending) == 1:
                raise RegexError(f"unexpected ) at position {i}")
            out.append(")" * pending.pop() + ")")
            quantified = 0
            i += 1
            continue
        if c == "|":
            if pending[-1]:
                raise RegexError("inline flags followed by an alternation in the same group are not supported; use (?flags:…)")
            quantified = 0
            out.append(c)
            i += 1
            continue
        if c in "*+?" or (c == "{" and _COUNTED_REPEAT.match(pattern, i)):
            i, quantified = _translate_repetition(pattern, i, quantified, out)
            continue
        quantified = 0
        out.append(c)
        i += 1
    if len(pending) != 1:
        raise RegexError("missing closing )")
    out.append(")" * pending[0])
    translated = "".join(out)
    try:
        re.compile(translated)
    except re.error as exc:
        raise RegexError(f"{exc}") from None
    return translated


def _translate_repetition(pattern: str, i: int, quantified: int, out: list[str]) -> tuple[int, int]:
    """The repetition operator at i (`*`, `+`, `?`, `{n,m}`) → (next index, new `quantified` state). RE2
    refuses a repetition of a repetition (Python takes some as possessive), except `?` making it lazy, and
    counts above RE2_MAX_REPEAT."""
    c = pattern[i]
    if c == "?" and quantified == 1:
        out.append(c)
        return i + 1, 2
    if quantified:
        raise RegexError(f"invalid nested repetition operator at position {i}")
    if c != "{":
        out.append(c)
        return i + 1, 1
    m = _COUNTED_REPEAT.match(pattern, i)
    low, high = int(m.group(1)), m.group(3)
    if low > RE2_MAX_REPEAT or (high and int(high) > RE2_MAX_REPEAT):
        raise RegexError(f"invalid repeat count {m.group(0)} (RE2 allows at most {RE2_MAX_REPEAT})")
    if high and int(high) < low:
        raise RegexError(f"invalid repeat count {m.group(0)}")
    out.append(m.group(0))
    return m.end(), 1


def _translate_escape(pattern: str, i: int) -> tuple[int, str]:
    if i + 1 >= len(pattern):
        raise RegexError("trailing backslash at end of expression")
    e = pattern[i + 1]
    if e == "Q":
        end = pattern.find("\\E", i + 2)
        literal = pattern[i + 2 :] if end < 0 else pattern[i + 2 : end]
        return (len(pattern) if end < 0 else end + 2), re.escape(literal)
    if e == "z":
        return i + 2, r"\Z"
    if e == "x" and pattern.startswith("{", i + 2):
        end = pattern.find("}", i + 3)
        digits = pattern[i + 3 : end] if end > 0 else ""
        if not digits or not all(ch in "0123456789abcdefABCDEF" for ch in digits) or int(digits, 16) > 0x10FFFF:
            raise RegexError(f"invalid escape sequence \\x{{{digits}")
        return end + 1, f"\\U{int(digits, 16):08x}"
    if e in "pP":
        raise RegexError(f"Unicode character classes (\\{e}…) are not supported")
    if e in "123456789":
        raise RegexError(f"invalid escape sequence \\{e} (RE2 has no back-references)")
    if e in "ZCgGkKhHlLuUNRXvVe":
        raise RegexError(f"invalid escape sequence \\{e}")
    return i + 2, pattern[i : i + 2]


def _translate_class(pattern: str, i: int) -> tuple[int, str]:
    out = ["["]
    j = i + 1
    n = len(pattern)
    if j < n and pattern[j] == "^":
        out.append("^")
        j += 1
    first = True
    while j < n:
        c = pattern[j]
        if c == "]" and not first:
            out.append("]")
            return j + 1, "".join(out)
        first = False
        if c == "[" and pattern.startswith("[:", j):
            end = pattern.find(":]", j + 2)
            if end < 0:
                out.append(r"\[")
                j += 1
                continue
            name = pattern[j + 2 : end]
            if name.startswith("^"):
                raise RegexError(f"negated POSIX class [:{name}:] is not supported")
            if name not in _POSIX_CLASSES:
                raise RegexError(f"invalid character class range [:{name}:]")
            out.append(_POSIX_CLASSES[name])
            j = end + 2
            continue
        if c == "\\":
            j2, text = _translate_escape(pattern, j)
            out.append(text)
            j = j2
            continue
        if c == "[":
            out.append(r"\[")  # Python warns on nested sets; RE2 takes "[" literally here
            j += 1
            continue
        out.append(c)
        j += 1
    raise RegexError("missing closing ]")


def _translate_group_open(pattern: str, i: int, out: list[str], pending: list[int], at_start: bool) -> tuple[int, bool]:
    rest = pattern[i + 2 : i + 4]
    if pattern.startswith("(?P<", i):
        out.append("(?P<")
        pending.append(0)
        return i + 4, False
    if rest[:1] == "<" and rest[1:2] not in ("=", "!"):
        out.append("(?P<")  # Go 1.22 / RE2 accept (?<name>…); Python 3.11 only (?P<name>…)
        pending.append(0)
        return i + 3, False
    m = _FLAG_GROUP.match(pattern, i)
    if m is None:
        raise RegexError(f"invalid or unsupported Perl syntax at position {i}: {pattern[i:i + 4]!r} (RE2 has no look-arounds, atomic groups, conditionals or comments)")
    on, off, end = m.group(1), m.group(2) or "", m.group(3)
    for flag in on + off:
        if flag == "U":
            raise RegexError("ungreedy mode (?U) is not supported")
        if flag not in "ims":
            raise RegexError(f"invalid or unsupported flag {flag!r} in {m.group(0)!r}")
    if end == ":":
        out.append(m.group(0))
        pending.append(0)
        return m.end(), False
    if at_start and not off:
        if on:
            out.append(f"(?{on})")  # global flags at the very start, as Python wants them
        return m.end(), True
    if not on and not off:
        return m.end(), at_start
    # Flags in the middle apply to the rest of the enclosing group: open a scoped group closed with it.
    out.append(f"(?{on}{'-' + off if off else ''}:")
    pending[-1] += 1
    return m.end(), False


def translate_re2_rewrite(substitution: str, groups: int) -> str:
    """RE2 rewrite (`\\1`, `\\\\`) → Python replacement template (`\\g<1>`, `\\\\`)."""
    out = []
    i = 0
    while i < len(substitution):
        c = substitution[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = substitution[i + 1 : i + 2]
        if nxt.isdigit():
            if int(nxt) > groups:
                raise RegexError(f"rewrite refers to group \\{nxt} but the match has only {groups} group(s)")
            out.append(f"\\g<{nxt}>")
        elif nxt == "\\":
            out.append("\\\\")
        else:
            raise RegexError(f"invalid rewrite pattern: \\{nxt} (use \\0-\\9 or \\\\)")
        i += 2
    return "".join(out)
