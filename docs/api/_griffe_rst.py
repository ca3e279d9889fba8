"""Griffe extension for the API reference: render lstmkit's reST-flavoured docstrings as Markdown.

The docstrings use Google-style sections (``Args:``) but reST inline markup, as Sphinx would
read it. Before mkdocstrings renders them, this rewrites, outside code:

* ``:class:`~lstmkit.GRU```, ``:func:`greedy```, ``:meth:`Streamer.step```, ... (any Python
  role) into inline code that links to the object's entry when the reference documents it
  (an *optional* autorefs cross-reference: a target that is not documented stays plain code and
  warns about nothing); a leading ``~`` shows the last name only, as in Sphinx;
* ``:math:`x``` into ``$x$`` (rendered by MathJax, see mkdocs.yml);
* ``>>>`` doctest blocks into fenced ``pycon`` code;
* reST literal blocks (a paragraph ending in ``::`` and the indented block after it) into fenced
  code;

and it reads the Sphinx ``#:`` comments above a module or class attribute as its docstring.

Only the rendered site changes: the source docstrings stay as they are (``help()`` and IDEs
show them unchanged). Loaded by mkdocs.yml (``extensions:`` of the python handler).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|meth|mod|attr|data|exc|obj|const|ref|doc|math):"
    r"`(?P<text>[^`]+)`"
)
FENCE = re.compile(r"^\s*(```|~~~)")


def _target(obj: griffe.Object | griffe.Alias, name: str) -> str:
    """The full path that ``name`` (as written in ``obj``'s docstring) most likely names."""
    if name.startswith("lstmkit"):
        return name
    if name.startswith("."):  # relative module reference, e.g. ``:mod:`.beam```
        package = obj.module.parent if obj.module.parent else obj.module
        return f"{package.path}.{name.lstrip('.')}"
    first, _, rest = name.partition(".")
    scope: Any = obj
    while scope is not None:  # a member of the object itself or of an enclosing class/module
        if first in scope.members:
            member = scope.members[first]
            path = member.target_path if member.is_alias else member.path  # imported: its origin
            return f"{path}{'.' + rest if rest else ''}"
        scope = scope.parent
    try:
        resolved = obj.resolve(first)
    except Exception:  # not resolvable from here: keep the name (an optional ref is harmless)
        return name
    return f"{resolved}{'.' + rest if rest else ''}"


def _roles(obj: griffe.Object | griffe.Alias, text: str) -> str:
    """Rewrite the roles of ``text`` (a role may run over a line break)."""

    def replace(match: re.Match[str]) -> str:
        role, text = match["role"], re.sub(r"\s*\n\s*", " ", match["text"])
        if role == "math":
            return f"${text}$"
        title = None
        if "<" in text and text.endswith(">"):  # :role:`title <target>`
            title, _, text = text[:-1].partition("<")
            title = title.strip()
        short = text.startswith("~")
        name = text.lstrip("~")
        shown = title or (name.rsplit(".", 1)[-1] if short else name.lstrip("."))
        if role in ("ref", "doc"):
            return f"`{shown}`"
        identifier = _target(obj, name)
        return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'

    # Roles inside ``inline code`` are left alone.
    parts = re.split(r"(``[^`]+``)", text)
    return "".join(p if p.startswith("``") else ROLE.sub(replace, p) for p in parts)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def convert(obj: griffe.Object | griffe.Alias, text: str) -> str:
    """The docstring ``text`` of ``obj`` with its reST markup rewritten as Markdown."""
    # Blocks first (doctests and literal blocks become fences), then the roles outside fences.
    out: list[str] = []
    prose: list[str] = []
    in_fence = False
    for line in _blocks(text).split("\n"):
        if FENCE.match(line):
            if not in_fence and prose:
                out.append(_roles(obj, "\n".join(prose)))
                prose = []
            in_fence = not in_fence
            out.append(line)
        elif in_fence:
            out.append(line)
        else:
            prose.append(line)
    if prose:
        out.append(_roles(obj, "\n".join(prose)))
    return "\n".join(out)


def _blocks(text: str) -> str:
    """``text`` with its doctest blocks and reST literal blocks turned into fenced code."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        stripped = line.strip()
        if stripped.startswith(">>>"):
            # A doctest block: up to the next blank line.
            pad = " " * _indent(line)
            out.extend(["", f"{pad}```pycon"])
            while i < len(lines) and lines[i].strip():
                out.append(pad + lines[i][len(pad) :])
                i += 1
            out.extend([f"{pad}```", ""])
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            # A literal block follows: the next lines indented deeper than this paragraph.
            base = _indent(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > base:
                head = line[: len(line) - len(line.lstrip())] + stripped[:-1]
                if stripped == "::":
                    head = ""
                elif head.endswith(" :"):  # "text ::" -> "text"
                    head = head[:-2]
                out.append(head)
                block: list[str] = []
                k = j
                while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) > base):
                    block.append(lines[k])
                    k += 1
                while block and not block[-1].strip():
                    block.pop()
                cut = min(_indent(b) for b in block if b.strip())
                pad = " " * base
                out.extend(["", f"{pad}```"])
                out.extend(pad + b[cut:] if b.strip() else "" for b in block)
                out.extend([f"{pad}```", ""])
                i = k
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _comment_docstring(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above the attribute ``obj``, as text (None without any)."""
    path = obj.filepath
    if not isinstance(path, Path) or path not in obj.lines_collection or not obj.lineno:
        return None
    lines = obj.lines_collection[path]
    if not lines:
        return None
    found: list[str] = []
    i = obj.lineno - 2  # the line above the assignment (lineno is 1-based)
    while i >= 0 and lines[i].strip().startswith("#:"):
        found.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return "\n".join(found) or None


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of a loaded package (names resolve once the whole package is in)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()

        def walk(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is None and obj.is_attribute:
                comment = _comment_docstring(obj)
                if comment is not None:
                    obj.docstring = griffe.Docstring(comment, lineno=obj.lineno, parent=obj)
            if obj.docstring is not None:
                obj.docstring.value = convert(obj, obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)  # type: ignore[arg-type]

        walk(pkg)
