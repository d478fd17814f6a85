"""The user documentation stays true: docs/language.md's examples compile, its op table matches
the registry, and docs/errors.md documents exactly the error codes the code base uses, each with
an example that really raises it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln import KilnError
from kiln.cli import main
from kiln.compiler.ops import REGISTRY
from kiln.compiler.ops.registry import REQUIRED

ROOT = Path(__file__).resolve().parent.parent
LANGUAGE = ROOT / "docs" / "language.md"
ERRORS = ROOT / "docs" / "errors.md"
SOURCE_DIRS = ("compiler", "runtime", "kiln")
CODE = re.compile(r'"(K0\d{3})"')


def fenced(path: Path, lang: str) -> list[tuple[int, str]]:
    """(line number, text) of every ```lang block of a markdown file."""
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```" + lang:
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            out.append((start, "\n".join(body) + "\n"))
        i += 1
    return out


def codes_in_source() -> set[str]:
    codes = set()
    for d in SOURCE_DIRS:
        for f in (ROOT / d).rglob("*.py"):
            codes.update(CODE.findall(f.read_text(encoding="utf-8")))
    return codes


def documented_codes() -> list[str]:
    return re.findall(r"^### (K0\d{3})\b", ERRORS.read_text(encoding="utf-8"), re.M)


# ---------------------------------------------------------------- language.md


def kiln_examples():
    return [pytest.param(text, id=f"language.md:{line}") for line, text in fenced(LANGUAGE, "kiln")]


@pytest.mark.parametrize("text", kiln_examples())
def test_language_example_compiles(text, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a relative import would resolve here, not in the repo
    program = kiln.load(text)
    if re.search(r"^model\b", text, re.M):
        program.elaborate()


def test_language_has_examples():
    assert len(fenced(LANGUAGE, "kiln")) >= 15


def _literal(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def _arg(a) -> str:
    if a.kind == "tensor":
        return f"{a.name}: T"
    if a.kind == "tensor?":
        return f"{a.name}: T? = none"
    if a.kind == "tensors":
        return f"{a.name}: [T]"
    return a.name if a.default is REQUIRED else f"{a.name} = {_literal(a.default)}"


def op_row(rec) -> str:
    """The op table row of docs/language.md for one registry record."""
    sig = f"{rec.name}({', '.join(_arg(a) for a in rec.args)})"
    return f"| `{rec.name}` | `{sig}` | {rec.doc.replace('|', chr(92) + '|')} |"


def test_op_table_matches_registry():
    text = LANGUAGE.read_text(encoding="utf-8")
    missing = [op_row(rec) for rec in REGISTRY.values() if op_row(rec) not in text]
    assert not missing, "rows to add or update in docs/language.md:\n" + "\n".join(missing)
    listed = set(re.findall(r"^\| `(\w+)` \| `\w+\(", text, re.M))
    assert listed <= set(REGISTRY), f"documented ops that do not exist: {listed - set(REGISTRY)}"


# ---------------------------------------------------------------- errors.md


def test_every_code_in_the_source_is_documented():
    missing = codes_in_source() - set(documented_codes())
    assert not missing, f"codes used in the source but not in docs/errors.md: {sorted(missing)}"


def test_every_documented_code_is_used():
    unused = set(documented_codes()) - codes_in_source()
    assert not unused, f"codes documented in docs/errors.md but never raised: {sorted(unused)}"


def test_codes_documented_once_in_order():
    codes = documented_codes()
    assert len(codes) == len(set(codes)) and codes == sorted(codes)


def printed_output(path: Path, start: int) -> str | None:
    """The ```text block that follows the fenced block starting at line `start` (1-based, its
    first body line) after one sentence ending in "prints:" or "printed as:", if there is one:
    the output the docs promise for that example."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = start
    while lines[i].strip() != "```":
        i += 1
    rest = [line for line in lines[i + 1:i + 5] if line.strip()]
    if len(rest) < 2 or not rest[0].rstrip().endswith(("prints:", "printed as:")):
        return None
    if rest[1].strip() != "```text":
        return None
    return next(text for line, text in fenced(path, "text") if line > i)


def error_examples():
    out = []
    for lang in ("kiln-error", "python-error"):
        for line, text in fenced(ERRORS, lang):
            m = re.match(r"#\s*expect\s+(K0\d{3})", text)
            assert m, f"docs/errors.md:{line}: the example must start with '# expect K0xxx'"
            out.append(pytest.param(lang, text, m.group(1), printed_output(ERRORS, line),
                                    id=f"{m.group(1)}@errors.md:{line}"))
    return out


def as_documented(output: str, tmp_path: Path) -> str:
    """Real output as the docs write it: paths relative to the example's directory, and the
    CPU a library was built for (the host's, here) as the docs' example names it."""
    output = output.replace(f"{tmp_path}{os.sep}", "")
    return re.sub(r"built for [\w-]+", "built for CPU", output)


@pytest.mark.parametrize("lang, text, code, printed", error_examples())
def test_error_example_raises_its_code(lang, text, code, printed, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KilnError) as info:
        if lang == "kiln-error":
            kiln.load(text).elaborate()
        else:
            exec(compile(text, "errors.md", "exec"), {"kiln": kiln, "np": np, "tmp": tmp_path})
    assert info.value.code == code, str(info.value)
    if printed is None:
        return
    if lang == "kiln-error":  # the docs show what `kiln check model.kiln` prints
        (tmp_path / "model.kiln").write_text(text, encoding="utf-8")
        capsys.readouterr()
        assert main(["check", "model.kiln"]) == 1
        output = capsys.readouterr().err
    else:
        output = f"{info.value}\n"
    assert as_documented(output, tmp_path) == as_documented(printed, tmp_path)


def test_error_examples_show_their_output():
    # every example but a few is followed by its output; the check above must not go idle
    assert sum(p.values[3] is not None for p in error_examples()) >= 30


def test_every_documented_code_has_an_example():
    with_examples = {p.values[2] for p in error_examples()}
    assert set(documented_codes()) <= with_examples
