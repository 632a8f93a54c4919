"""Every relative link in the project's markdown resolves: the file it names exists, and a #anchor names a heading
of that file (GitHub's rule for heading anchors). Docs are reorganised and files move; a link that silently breaks
is what a reader meets first."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "runs", "data", "node_modules"}  # runs/ and data/ at the root are outputs, not docs
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def markdown_files():
    return sorted(p for p in ROOT.rglob("*.md") if not SKIP & set(p.relative_to(ROOT).parts[:1]))


def anchors(text):
    """The anchors GitHub gives a file's headings: lower case, punctuation but '-' and '_' dropped, spaces to '-',
    a repeated heading suffixed -1, -2, ..."""
    seen, out = {}, set()
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(path):
    text = FENCE.sub("", path.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, s3: ...
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            yield f"{path.relative_to(ROOT)}: {target}: no such file"
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            yield f"{path.relative_to(ROOT)}: {target}: no heading with that anchor in {dest.relative_to(ROOT)}"


def test_anchor_rule():
    text = "# Loader\n## `cluster/launch.py` through Ray (2026-11-30)\n```\n# not a heading\n```\n## Loader\n"
    assert anchors(text) == {"loader", "clusterlaunchpy-through-ray-2026-11-30", "loader-1"}


def test_every_relative_link_resolves():
    files = markdown_files()
    assert any(p.name == "README.md" for p in files) and any(p.parent.name == "docs" for p in files)
    broken = [b for p in files for b in broken_links(p)]
    assert not broken, "broken markdown links (fix the link or the heading):\n" + "\n".join(broken)
