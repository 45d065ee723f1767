"""The README and the pages of docs/: every relative link names a file that exists and a heading
that is there, and the README's first screen holds the two commands."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                         if f.endswith(".md")]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    with open(os.path.join(ROOT, path)) as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)  # a '#' in a code block is no heading
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def links(path: str):
    with open(os.path.join(ROOT, path)) as f:
        for m in re.finditer(r"\]\(([^)\s]+)\)", f.read()):
            target = m.group(1)
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not ours to check
                yield target


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    for target in links(page):
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
        assert os.path.exists(os.path.join(ROOT, resolved)), f"{page}: {target}: no such file"
        if anchor and resolved.endswith(".md"):
            assert anchor in anchors(resolved), f"{page}: {target}: no such heading"


def test_the_first_screen_has_the_two_commands_and_the_common_paths():
    with open(os.path.join(ROOT, "README.md")) as f:
        first_screen = "".join(f.readlines()[:40])
    for command in ("make demo", "make test", "python train.py", "torchrun", "test_dataset.py", "test_image.py",
                    "test_video.py", "export_onnx.py"):
        assert command in first_screen, command


def test_docs_pages_are_linked_from_the_readme():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for page in PAGES[1:]:
        assert f"]({page}" in readme, f"{page} is not linked from the README"


def test_pages_named_in_the_code_exist():
    """A help text or docstring that sends the reader to a page of docs/ names one that is there."""
    named = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("mutants", "__pycache__")]
        for f in files:
            if f.endswith((".py", ".sh")) or f in ("Makefile", "Dockerfile"):
                named |= set(re.findall(r"docs/[\w.-]+\.md", open(os.path.join(folder, f), errors="replace").read()))
    assert named and all(os.path.exists(os.path.join(ROOT, page)) for page in named), sorted(named)
