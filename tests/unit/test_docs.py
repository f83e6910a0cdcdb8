"""The docs stay true: the key reference is the schema's, the site builds strictly, the README stays short,
every example is either run by tests/integration/test_doc_examples.py or marked with a reason, and code
comments point at docs pages, not README sections (issue #26)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests import docblocks
from tests.conftest import ROOT, run_cli
from trainer import config as C

MKDOCS = os.path.join(os.path.dirname(sys.executable), "mkdocs")


def test_config_md_is_exactly_the_output_of_config_markdown():
    r = run_cli(["config", "--markdown"])
    assert r.returncode == 0, r.stderr
    with open(os.path.join(ROOT, "docs", "config.md"), encoding="utf-8") as fh:
        page = fh.read()
    assert page == r.stdout, "docs/config.md is stale: python -m trainer config --markdown > docs/config.md"


def test_the_markdown_reference_has_every_key_with_its_type_default_choices_and_help():
    text = C.markdown()
    rows = {line.split(" | ")[0].strip("| `"): line for line in text.splitlines() if line.startswith("| `")}
    assert list(rows) == [ref["key"] for ref in C.reference()]  # every key, in schema order
    for ref in C.reference():
        cells = rows[ref["key"]].strip("|").split(" | ")
        assert len(cells) == 5, cells  # key, type, default, allowed, help: no stray cell separator
        default = ref["default"]
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        shown = "null" if default is None else shown
        assert cells[2].strip() == f"`{shown}`", (ref["key"], cells[2])
        for choice in ref["choices"]:
            assert f"`{choice}`" in cells[3], (ref["key"], choice)
        assert ref["range"].replace("<", "&lt;") in cells[3]
        assert ref["help"] and cells[4].strip()
    # what Markdown would read as markup is escaped outside code spans
    assert "runs/&lt;model>-&lt;key>" in rows["run.dir"]
    assert "linreg \\| cnn" in rows["model.name"]


def test_config_markdown_takes_no_recipe():
    r = run_cli(["config", "--markdown", "-c", "configs/cnn.yaml"])
    assert r.returncode == 2 and "--markdown takes no recipe" in r.stderr


def _site_copy(tmp_path):
    shutil.copy(os.path.join(ROOT, "mkdocs.yml"), tmp_path / "mkdocs.yml")
    shutil.copytree(os.path.join(ROOT, "docs"), tmp_path / "docs")
    return tmp_path


def _build(cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run(
        [MKDOCS, "build", "--strict", "--site-dir", str(cwd / "site")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_docs_site_builds_strictly(tmp_path):
    site = _site_copy(tmp_path)
    r = _build(site)
    assert r.returncode == 0, r.stderr[-3000:]
    for page in ("index", "install", "config", "resume", "design"):
        assert (site / "site" / page / "index.html").exists() or (site / "site" / f"{page}.html").exists()


def test_a_broken_link_a_broken_anchor_or_a_page_left_out_of_nav_fails_the_build(tmp_path):
    site = _site_copy(tmp_path)
    with open(site / "docs" / "index.md", "a", encoding="utf-8") as fh:
        fh.write("\n[broken](no-such-page.md) and [broken anchor](install.md#no-such-section)\n")
    (site / "docs" / "orphan.md").write_text("# Orphan\n")
    r = _build(site)
    assert r.returncode != 0, r.stderr[-2000:]
    for needle in ("no-such-page.md", "no-such-section", "orphan.md"):  # strict mode reports each of them
        assert needle in r.stderr, (needle, r.stderr[-2000:])


def test_the_readme_is_one_screen_of_quick_start_at_most_250_lines():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert len(lines) <= 250, len(lines)
    text = "\n".join(lines)
    for must in ("make train", ". .venv/bin/activate", "fit(", "## Launch modes", "## Exit codes", "docs/"):
        assert must in text, must


def test_readme_links_into_docs_name_pages_that_exist():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert links
    for link in links:
        assert os.path.exists(os.path.join(ROOT, link)), link


def test_every_example_is_run_or_skipped_for_a_reason():
    counts = {"run": 0, "skip": 0, "s3": 0, "mlflow": 0}
    for page in docblocks.pages():
        for block in docblocks.runnable(page):  # raises on an unknown or reasonless marker
            counts[block.kind] += 1
            if block.kind == "skip":
                assert len(block.note.split()) >= 3, f"{block.where}: say why it cannot run here"
    assert counts["run"] >= 20 and counts["s3"] >= 1 and counts["mlflow"] >= 1, counts


def test_a_marker_without_a_reason_or_of_an_unknown_kind_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(docblocks, "ROOT", str(tmp_path))
    cases = (("<!-- doc-test: skip -->", "needs a reason"), ("<!-- doc-test: maybe x -->", "unknown"))
    for marker, needle in cases:
        (tmp_path / "p.md").write_text(f"{marker}\n```bash\ntrue\n```\n")
        with pytest.raises(ValueError, match=needle):
            docblocks.blocks("p.md")


def test_every_docs_page_is_in_the_nav():
    pages = set(docblocks.pages())
    on_disk = {f"docs/{f}" for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")}
    assert on_disk <= pages, sorted(on_disk - pages)


def test_code_comments_point_at_docs_pages_not_readme_sections():
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    pattern = re.compile(r"README(\.md)?('s)?,? *\"?[A-Z][a-z]")  # a README section named in a comment
    bad = []
    for rel in listed:
        if rel.endswith(".md") or not os.path.isfile(os.path.join(ROOT, rel)):
            continue
        try:
            with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if pattern.search(line):
                        bad.append(f"{rel}:{n}: {line.strip()}")
        except UnicodeDecodeError:
            continue
    assert not bad, "\n".join(bad)
