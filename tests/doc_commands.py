"""The commands of the documentation, as the tests read them (tests/test_docs.py checks them; the end-to-end
tests of each module run the ones they cover, taken from here so that a changed flag there changes what runs).

Sources: the fenced code blocks of README.md, data/README.md and colab/README.md and their inline `python ...` /
`pip ...` code spans; the indented command lines (and ``python ...`` spans) of the module docstrings of
configs/*.py, sparse_restore/{main,infer,evaluate,bench}.py, sparse_restore/convert/__main__.py and
data/tfds_build.py. Backslash-continued lines are joined, comments dropped, `a && b` split; a command with
`[optional]` parts stands for the line with them left out and with them all put in (once per `a|b` alternative).
"""
import ast
import dataclasses
import functools
import pathlib
import re
import shlex
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

MARKDOWN_DOCS = ("README.md", "data/README.md", "colab/README.md")
DOCSTRING_DOCS = tuple(sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.py"))) + (
    "sparse_restore/main.py", "sparse_restore/infer.py", "sparse_restore/evaluate.py", "sparse_restore/bench.py",
    "sparse_restore/convert/__main__.py", "data/tfds_build.py")
# First words a documented command may start with. A line of a ```bash block starting with anything else stops
# the collection of this file with a message naming it: extend check_tokens for the new kind of command.
PROGRAMS = ("python", "python3", "pip", ".", "tensorboard")


@dataclasses.dataclass(frozen=True)
class Command:
  """One documented command: where it is written, its words, and whether it came from a code block or prose."""
  source: str              # "README.md:93"
  tokens: Tuple[str, ...]  # shell words, comments dropped, one command of an `a && b` line
  inline: bool = False     # from an inline code span (`...`) rather than a code block / docstring command line

  @property
  def text(self) -> str:
    """Canonical form: the words joined by single spaces (the key of the coverage table)."""
    return " ".join(_quoted(t) for t in self.tokens)

  def where(self) -> str:
    return f"{self.source}: `{self.text}`"


def _quoted(word: str) -> str:
  """A word as the documentation writes it: quoted when it holds spaces, quotes, braces or `name[extra]`."""
  if not re.search(r"[\s'\"{}]|[^\s\[]\[", word):
    return word
  return f'"{word}"' if '"' not in word else f"'{word}'"


def _shell_words(line: str, source: str) -> List[List[str]]:
  """Shell words of one logical line, split at `&&` (comments dropped)."""
  try:
    words = shlex.split(line, comments=True)
  except ValueError as e:
    raise AssertionError(f"{source}: cannot split `{line}` into shell words: {e}") from None
  commands, current = [], []
  for w in words:
    if w == "&&":
      commands.append(current)
      current = []
    else:
      current.append(w)
  commands.append(current)
  return [c for c in commands if c]


def _logical_lines(lines: Sequence[Tuple[int, str]]) -> List[Tuple[int, str]]:
  """Joins backslash-continued lines; keeps the number of the first line."""
  out, buf, first = [], "", None
  for number, line in lines:
    if first is None:
      first = number
    if line.rstrip().endswith("\\"):  # (a non-raw docstring writes the continuation as two backslashes)
      buf += line.rstrip().rstrip("\\") + " "
      continue
    out.append((first, buf + line))
    buf, first = "", None
  if buf:
    out.append((first, buf))
  return out


def _starts_like_a_command(line: str) -> bool:
  words = line.split()
  return bool(words) and words[0] in PROGRAMS


def markdown_commands(rel: str, text: Optional[str] = None) -> List[Command]:
  """Commands in the fenced code blocks of a Markdown file, and inline `python ...` / `pip ...` code spans."""
  text = (REPO / rel).read_text() if text is None else text
  lines = text.splitlines()
  commands, fence, lang, block, prose = [], None, "", [], []
  for number, line in enumerate(lines, 1):
    stripped = line.strip()
    if stripped.startswith("```"):
      if fence is None:
        fence, lang, block = number, stripped[3:].strip().lower(), []
      else:
        for first, logical in _logical_lines(block):
          body = logical.strip()
          if not body or body.startswith("#"):
            continue
          if not _starts_like_a_command(body):
            if lang in ("bash", "sh", "shell", "console"):
              raise AssertionError(f"{rel}:{first}: `{body}` in a {lang} block does not start with a known "
                                   f"program {PROGRAMS}; teach tests/test_docs.py to check it")
            continue  # e.g. the Python snippet of data/README.md
          for words in _shell_words(body, f"{rel}:{first}"):
            commands.append(Command(f"{rel}:{first}", tuple(words)))
        fence = None
      continue
    if fence is not None:
      block.append((number, line))
    else:
      prose.append((number, line))
  commands += _inline_commands(rel, prose, MARKDOWN_SPAN)
  return commands


MARKDOWN_SPAN = r"(?<!`)`([^`]+)`(?!`)"
DOCSTRING_SPAN = r"``(.+?)``"


def _code_spans(prose: Sequence[Tuple[int, str]], pattern: str) -> List[Tuple[int, str]]:
  """(line number, text with whitespace collapsed) of the inline code spans (which may wrap over lines)."""
  joined = "\n".join(line for _, line in prose)
  starts = [0]
  for _, line in prose:
    starts.append(starts[-1] + len(line) + 1)
  return [(prose[max(i for i, s in enumerate(starts[:-1]) if s <= m.start())][0], " ".join(m.group(1).split()))
          for m in re.finditer(pattern, joined, re.S)]


def _inline_commands(rel: str, prose: Sequence[Tuple[int, str]], pattern: str) -> List[Command]:
  """Inline code spans that are `python ...` or `pip ...` commands."""
  out = []
  for number, span in _code_spans(prose, pattern):
    if re.match(r"(python3?|pip) ", span) and "..." not in span:
      out += [Command(f"{rel}:{number}", tuple(words), inline=True) for words in _shell_words(span, rel)]
  return out


def _docstring_lines(rel: str, source: Optional[str] = None) -> List[Tuple[int, str]]:
  source = (REPO / rel).read_text() if source is None else source
  tree = ast.parse(source)
  node = tree.body[0] if tree.body else None
  if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
    return []
  lines = source.splitlines()
  return [(n, lines[n - 1]) for n in range(node.lineno, node.end_lineno + 1)]


def docstring_commands(rel: str, source: Optional[str] = None) -> List[Command]:
  """Indented `python ...` command lines of a module docstring, and inline ``python ...`` spans."""
  commands = []
  doc = _docstring_lines(rel, source)
  for first, logical in _logical_lines(doc):
    if re.match(r"\s{2,}(python3?|pip) ", logical):
      for words in _shell_words(logical.strip(), f"{rel}:{first}"):
        commands.append(Command(f"{rel}:{first}", tuple(words)))
  commands += _inline_commands(rel, doc, DOCSTRING_SPAN)
  return commands


@functools.lru_cache(maxsize=None)
def all_commands() -> Tuple[Command, ...]:
  out = []
  for rel in MARKDOWN_DOCS:
    out += markdown_commands(rel)
  for rel in DOCSTRING_DOCS:
    out += docstring_commands(rel)
  return tuple(out)


def variants(tokens: Sequence[str]) -> List[List[str]]:
  """The command lines a documented command stands for: `[optional]` parts left out, then all put in (once per
  `a|b` alternative)."""
  parts, group = [], None  # parts: (optional?, token)
  for t in tokens:
    opens = t.startswith("[") and group is None
    if opens:
      group, t = [], t[1:]
    closes = group is not None and t.endswith("]") and not re.search(r"\[[^\]]*\]$", t)
    if closes:
      t = t[:-1]
    if group is not None:
      parts.append((True, t))
      if closes:
        group = None
    else:
      parts.append((False, t))
  n_alternatives = max([len(t.split("|")) for _, t in parts] + [1])
  out = [[t for optional, t in parts if not optional]]
  for k in range(n_alternatives):
    out.append([(t.split("|")[k] if k < len(t.split("|")) else t.split("|")[0]) for _, t in parts])
  unique = []
  for v in out:
    if v not in unique:
      unique.append(v)
  return unique


COMMANDS = all_commands()


def doc_command(text: str) -> List[str]:
  """The words of the documented command whose canonical text is ``text`` (fails if the docs dropped it)."""
  for c in COMMANDS:
    if c.text == text:
      return list(c.tokens)
  pytest.fail(f"no documented command reads `{text}` any more; update the test and tests/test_docs.py's RUNNERS")


def substitute(words: Sequence[str], mapping: Dict[str, str]) -> List[str]:
  """Replaces whole words, and the value of `--flag=value` words, found in ``mapping``."""
  out = []
  for w in words:
    flag, eq, value = w.partition("=")
    out.append(f"{flag}={mapping[value]}" if eq and flag.startswith("--") and value in mapping
               else mapping.get(w, w))
  return out


def cli_args(words: Sequence[str], module: str) -> List[str]:
  """The arguments after `python -m <module>`."""
  assert list(words[:3]) == ["python", "-m", module], words
  return list(words[3:])
