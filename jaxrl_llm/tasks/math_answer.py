"""Math answers: extraction (`\\boxed{}`, `####`, LaTeX, last number) and equivalence (math-verify).

    extract_answer(text, mode="auto")   # auto: last \\boxed{} → text after the last '####'
                                        #       → last math span or number, whichever ends later
    answers_equal(pred, gold)           # normalise; exact rational comparison when both are plain
                                        # numbers; else math-verify's symbolic equivalence

Normalisation handles the usual noise of model outputs and datasets: `$…$`,
`\\(…\\)`, `\\text{…}`, `\\dfrac`/`\\tfrac`, thousands separators (`1,234`),
unicode minus (`−`), a trailing period, `%`, and unit words after a number
(`5 cm`, `18 dollars`). Numbers compare exactly as fractions (`0.5` = `1/2` =
`\\frac{1}{2}`), decimals up to a relative tolerance `rel_tol`.

Without `\\boxed` or '####', 'auto' reads the answer as LaTeX, not as its last
digit group (`$\\frac{1}{2}$` is ½, not 2): the last math span (`$…$`, `$$…$$`,
`\\(…\\)`, `\\[…\\]`) unless a number follows it, else the last number — widened
to its whitespace-delimited token when that token is balanced LaTeX (`2^{10}`,
`\\sqrt{2}`). A `$` follows pandoc's rule, so money is not math: an opening `$`
has a non-space on its right, a closing `$` a non-space on its left and no digit
after it (`$5 and $10` is text).
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

__all__ = [
    "extract_boxed",
    "extract_hash",
    "extract_last_number",
    "extract_last_math",
    "extract_answer",
    "normalize_answer",
    "to_number",
    "answers_equal",
    "EXTRACT_MODES",
]

EXTRACT_MODES = ("auto", "boxed", "hash", "last_number", "last_math")

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|[-+]?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_PLAIN_NUM = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?$")
_UNIT_TAIL = re.compile(r"^(" + _NUMBER + r")\s*(?:[a-zA-Z]+\.?\s*){1,3}$")
_LATEX_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
# Math spans: display $$…$$, \[…\], \(…\), then inline $…$ by pandoc's rule (module doc).
_MATH_SPAN_RE = re.compile(
    r"(?<!\\)\$\$(?P<d>.+?)(?<!\\)\$\$"
    r"|\\\[(?P<b>.+?)\\\]"
    r"|\\\((?P<p>.+?)\\\)"
    r"|(?<![\\$])\$(?P<i>[^\s$](?:[^$]*?[^\s$\\])?)\$(?![\d$])",
    re.DOTALL,
)
_LATEX_CHARS = re.compile(r"[\\^{}_]")
_CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces matched; `\\boxed 5` too."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)", text)]
    for start in reversed(starts):
        rest = text[start:]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            depth, i0 = 0, start + (len(rest) - len(stripped))
            for j in range(i0, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i0 + 1 : j].strip()
            continue  # unbalanced: try an earlier one
        if rest.startswith(" "):
            m = re.match(r"\s+([^\s$]+)", rest)
            if m:
                return m.group(1).strip()
    return None


def extract_hash(text: str) -> str | None:
    """The first line after the last '####' (GSM8K's answer marker), stripped."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip()
    line = tail.split("\n", 1)[0].strip()
    return line or None


def extract_last_number(text: str) -> str | None:
    """The last number in `text` ('1,234.5', '-3', '3/4'), thousands separators kept."""
    matches = _NUMBER_RE.findall(text.replace("−", "-"))
    return matches[-1].strip() if matches else None


def _last_math_span(text: str) -> re.Match | None:
    spans = list(_MATH_SPAN_RE.finditer(text))
    return spans[-1] if spans else None


def extract_last_math(text: str) -> str | None:
    """Content of the last math span (`$…$`, `$$…$$`, `\\(…\\)`, `\\[…\\]`), stripped."""
    m = _last_math_span(text)
    if m is None:
        return None
    return next(g for g in m.groups() if g is not None).strip() or None


def _balanced(token: str) -> bool:
    depth = 0
    for ch in token:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _last_number_or_latex_token(text: str) -> str | None:
    """The last number; its whitespace-delimited token instead when that is balanced LaTeX."""
    text = text.replace("−", "-")
    matches = list(_NUMBER_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    start = max(text.rfind(c, 0, m.start()) for c in " \t\n") + 1
    end = min([i for i in (text.find(c, m.end()) for c in " \t\n") if i >= 0] or [len(text)])
    token = text[start:end].rstrip(".,;:!?")
    if _LATEX_CHARS.search(re.sub(r"\\[$%]", "", token)) and _balanced(token):  # '\$5' is money
        return token
    return m.group().strip()


def _extract_latex_or_number(text: str) -> str | None:
    """'auto' without a box or '####': the last math span, unless a number follows it."""
    text = _CALCULATOR_NOTE.sub(" ", text)
    span = _last_math_span(text)
    if span is None:
        return _last_number_or_latex_token(text)
    after = _last_number_or_latex_token(text[span.end() :])
    return after if after is not None else extract_last_math(text)


def extract_answer(text: str, mode: str = "auto") -> str | None:
    """The final answer in `text` by `mode` ∈ EXTRACT_MODES; None when there is none.

    'auto' tries the last `\\boxed{}`, then '####', then the last math span or
    the last number, whichever ends later (module doc).
    """
    if mode not in EXTRACT_MODES:
        raise ValueError(f"extract mode must be one of {EXTRACT_MODES}, got {mode!r}")
    if mode == "boxed":
        return extract_boxed(text)
    if mode == "hash":
        return extract_hash(text)
    if mode == "last_number":
        return extract_last_number(text)
    if mode == "last_math":
        return extract_last_math(text)
    for fn in (extract_boxed, extract_hash, _extract_latex_or_number):
        ans = fn(text)
        if ans is not None:
            return ans
    return None


def _unwrap(s: str, command: str) -> str:
    """Replaces `\\command{X}` by X (non-nested X)."""
    return re.sub(r"\\" + command + r"\s*\{([^{}]*)\}", r"\1", s)


def normalize_answer(s: str) -> str:
    """A canonical string form of an answer (see the module docstring)."""
    s = s.strip().replace("−", "-").replace("–", "-")
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    for cmd in ("text", "textbf", "mathrm", "mathbf", "boxed"):
        s = _unwrap(s, cmd)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = (
        s.replace("\\left", "")
        .replace("\\right", "")
        .replace("\\!", "")
        .replace("\\,", "")
        .replace("\\;", "")
    )
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # 'x = 5' → '5'
    s = s.strip().rstrip(".").strip()
    m = _UNIT_TAIL.match(s)
    if m:
        s = m.group(1)
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    return s.replace(" ", "")


def to_number(s: str) -> Fraction | None:
    """The exact value of a normalised plain number ('-3', '2.50', '3/4', '\\frac{1}{2}'), else None."""
    m = _LATEX_FRAC.match(s)
    if m:
        if int(m.group(3)) == 0:
            return None
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return -value if m.group(1) else value
    if _PLAIN_NUM.match(s):
        num, _, den = s.partition("/")
        if den and int(den) == 0:
            return None
        return Fraction(num) / (Fraction(den) if den else 1)
    return None


def _math_verify_equal(pred: str, gold: str) -> bool:
    from math_verify import parse, verify  # lazy: pulls in sympy

    in_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if in_main else None  # math-verify's timeouts use signals (main thread only)
    gold_p = parse(f"${gold}$", parsing_timeout=timeout)
    pred_p = parse(f"${pred}$", parsing_timeout=timeout)
    if not gold_p or not pred_p:
        return False
    return bool(verify(gold_p, pred_p, timeout_seconds=timeout))


def answers_equal(
    pred: str | None, gold: str, *, rel_tol: float = 1e-6, use_math_verify: bool = True
) -> bool:
    """Whether `pred` and `gold` denote the same answer.

    Both are normalised; plain numbers compare exactly as fractions when both
    are exact, else within `rel_tol` relative error; anything else goes to
    math-verify (symbolic: `\\sqrt{2}/2` = `\\frac{\\sqrt{2}}{2}`, intervals,
    sets). None (no answer extracted) is never equal.
    """
    if pred is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p:
        return False
    if p == g:
        return True
    pn, gn = to_number(p), to_number(g)
    if pn is not None and gn is not None:
        if pn == gn:
            return True
        return abs(pn - gn) <= rel_tol * max(abs(gn), Fraction(1, 10**12))
    if use_math_verify:
        try:
            return _math_verify_equal(p, g)
        except Exception:  # noqa: BLE001 - an unparsable answer is not equal
            return False
    return False
