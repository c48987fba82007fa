"""A safe arithmetic-expression parser and evaluator (no `eval`).

Grammar (recursive descent, standard precedence, left associative):

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := INT | '(' expr ')' | '-' factor      (unary minus only when allowed)

Only digits, the four operators, parentheses and spaces are accepted; anything
else (names, dots, `**`, underscores, quotes) is rejected before parsing.
Values are exact `fractions.Fraction`s; division by zero, over-long input,
too-deep nesting and too-large integers raise `ExprError`.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["ExprError", "parse_expr", "evaluate", "tokenize"]

_ALLOWED = re.compile(r"^[0-9+\-*/() ]*$")
_TOKEN = re.compile(r"\d+|[+\-*/()]")


class ExprError(ValueError):
    """The text is not a valid expression under the safe grammar."""


def tokenize(text: str, *, max_len: int = 200) -> list[str]:
    if len(text) > max_len:
        raise ExprError(f"expression longer than {max_len} characters")
    if not _ALLOWED.match(text):
        bad = sorted({c for c in text if not re.match(r"[0-9+\-*/() ]", c)})
        raise ExprError(f"characters not allowed in an expression: {bad}")
    tokens = _TOKEN.findall(text)
    # Spaces inside a number ("1 2") would silently merge if stripped first: forbid them.
    if re.search(r"\d\s+\d", text):
        raise ExprError("two numbers separated only by a space")
    if not tokens:
        raise ExprError("empty expression")
    return tokens


class _Parser:
    def __init__(self, tokens, *, allow_unary_minus, max_depth, max_digits):
        self.toks, self.i = tokens, 0
        self.allow_unary_minus, self.max_depth, self.max_digits = (
            allow_unary_minus,
            max_depth,
            max_digits,
        )
        self.numbers: list[int] = []

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self):
        tok = self.peek()
        if tok is None:
            raise ExprError("unexpected end of expression")
        self.i += 1
        return tok

    def expr(self, depth):
        if depth > self.max_depth:
            raise ExprError(f"nesting deeper than {self.max_depth}")
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth):
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "*":
                value = value * rhs
            else:
                if rhs == 0:
                    raise ExprError("division by zero")
                value = value / rhs
        return value

    def factor(self, depth):
        tok = self.take()
        if tok.isdigit():
            if len(tok) > self.max_digits:
                raise ExprError(f"integer with more than {self.max_digits} digits")
            self.numbers.append(int(tok))
            return Fraction(int(tok))
        if tok == "(":
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise ExprError("missing ')'")
            return value
        if tok == "-" and self.allow_unary_minus:
            return -self.factor(depth + 1)
        raise ExprError(f"unexpected token {tok!r}")


def parse_expr(
    text: str,
    *,
    allow_unary_minus: bool = False,
    max_len: int = 200,
    max_depth: int = 16,
    max_digits: int = 12,
) -> tuple[Fraction, list[int]]:
    """(exact value, integer literals in order of appearance) of `text`.

    Raises ExprError for anything outside the grammar. Sizes are bounded by
    `max_len` characters, `max_depth` nesting and `max_digits` per literal, so a
    hostile completion cannot make the verifier slow.
    """
    parser = _Parser(
        tokenize(text, max_len=max_len),
        allow_unary_minus=allow_unary_minus,
        max_depth=max_depth,
        max_digits=max_digits,
    )
    value = parser.expr(0)
    if parser.peek() is not None:
        raise ExprError(f"unexpected token {parser.peek()!r}")
    return value, parser.numbers


def evaluate(text: str, **kwargs) -> Fraction:
    """The exact value of `text` (see `parse_expr`)."""
    return parse_expr(text, **kwargs)[0]
