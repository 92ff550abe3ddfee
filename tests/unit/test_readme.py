"""The README stays short and true: its links resolve, its Quickstart is what CI runs, and
every page of the docs site is in its table of contents."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_readme_is_short_and_every_link_in_it_resolves():
    assert len(README.splitlines()) <= 160
    for target in re.findall(r"\]\(([^)#\s]+)", README):
        assert target.startswith("https://") or (ROOT / target).exists(), target


def test_the_quickstart_is_what_ci_runs():
    block = re.search(r"## Quickstart\n\n```bash\n(.*?)\n```", README, re.S).group(1).splitlines()
    install, tests = block
    ci = (ROOT / ".ci" / "run").read_text()
    assert install.startswith('pip install -e ".[dev]"') and 'python3 -m pip install --quiet -e ".[dev]"' in ci
    assert tests == "pytest && pytest -m extended"
    assert "python3 -m pytest\npython3 -m pytest -m extended" in ci


def test_every_page_of_the_docs_site_is_in_a_table_of_contents():
    index = (ROOT / "docs" / "index.md").read_text()
    listed = set(re.findall(r"^([a-z][\w/-]*)$", index, re.M))
    pages = {str(p.relative_to(ROOT / "docs").with_suffix("")) for p in (ROOT / "docs").rglob("*.md")} - {"index"}
    assert pages - listed == set()
