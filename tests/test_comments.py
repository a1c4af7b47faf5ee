"""Comments and docstrings of the packages say why, not how fast: no measured timing in them.

A figure goes stale the day the code or the machine changes; the measured ones live in
benchmarks/README.md ("Figures behind design choices"), next to how they were measured.
"""

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wire", "client_sdk", "strategies", "server", "simulations", "pollen")
TIMING = re.compile(
    r"\d(\.\d+)? ?(ns|us|µs|ms|secs?|seconds?|minutes?)\b"  # 425 us, 0.13 ms, 12 seconds
    r"|\d(\.\d+)? s\b(?!\s*[\^*])"  # 0.29 s; not int64s, not the 2 s^2 of a formula
    r"|\d(\.\d+)? ?x (faster|slower|quicker)\b"  # 1.5x faster, 2 x slower
    r"|\d ?[KMG]i?B/s\b",  # 3 GB/s
    re.IGNORECASE,
)


def _comments_and_docstrings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and every line of every docstring in ``source``."""
    found = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if ast.get_docstring(node, clean=False) is not None:
                doc = node.body[0]
                found += [(doc.lineno + i, t) for i, t in enumerate(doc.value.value.splitlines())]
    return found


def _timings(source: str) -> list[tuple[int, str]]:
    return sorted((n, t.strip()) for n, t in _comments_and_docstrings(source) if TIMING.search(t))


def test_no_comment_or_docstring_quotes_a_timing():
    quoting = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, text in _timings(path.read_text())
    ]
    assert quoting == [], "move the figure to benchmarks/README.md and keep the reason here"


def test_the_pattern_finds_timings_and_spares_other_numbers():
    source = (
        '"""Decoding took 425 us per update, 118 us now."""\n'
        "\n"
        "# int64s, 8 bits, 2^32 words, 30% dropouts and 10,000 clients are no timings\n"
        "# nor are exp(-2 pi^2 s^2 k) and 4 s * n\n"
        "def f(timeout_s=30):\n"
        '    """One step: 0.29 s packed; the loop is 1.5x faster (3 GB/s)."""\n'
        '    return "12 ms"  # a string that is not a docstring: 70 ms a step\n'
    )
    assert [line for line, _ in _timings(source)] == [1, 6, 7]
