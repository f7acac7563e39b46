"""Every committed results folder says how it was produced: a README naming the command (and recipe)."""

import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"
FOLDERS = sorted(p for p in RESULTS.iterdir() if p.is_dir())


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_results_folder_has_a_readme_naming_its_command(folder):
    readme = folder / "README.md"
    assert readme.is_file(), f"{folder} has no README.md"
    text = readme.read_text()
    assert re.search(r"python -m adafilter_lib (demo|tune|table|bench|prune-bench|prune|sweep|train|compact)\b", text), readme
    if folder.name != "bench":  # step-time records: each JSON record holds its own command line instead
        assert re.search(r"adafilter_lib/configs/[\w/]+\.yaml", text), f"{readme} names no recipe file"


def test_every_recipe_a_results_readme_or_the_findings_name_exists():
    root = RESULTS.parent
    named = set()
    for readme in [*RESULTS.rglob("README.md"), root / "docs" / "FINDINGS.md", root / "README.md"]:
        named |= set(re.findall(r"adafilter_lib/configs/[\w/]+\.yaml", readme.read_text()))
    assert named, "no results README names a recipe file"
    assert [n for n in sorted(named) if not (root / n).is_file()] == []


def test_every_tune_command_in_the_docs_names_a_recipe_that_exists():
    from adafilter_lib.core.config_files import resolve_config

    root = RESULTS.parent
    texts = [*RESULTS.rglob("README.md"), *(root / "docs").glob("*.md"), root / "README.md"]
    texts += list((root / "adafilter_lib" / "configs" / "studies").glob("*.yaml"))
    # the kit's own studies (a user's file, such as README's my_study.yaml, is an example)
    named = {m for path in texts for m in re.findall(r"adafilter_lib tune (studies/[\w/.-]+)", path.read_text())}
    assert "studies/uc_merced_few" in named
    assert [n for n in sorted(named) if not resolve_config(n).is_file()] == []


QUOTE = re.compile(r"<!-- (results/\S+), written by the tune command; copied here unchanged -->\n((?:\|.*\n)+)")


@pytest.mark.parametrize("doc", ["README.md", "docs/FINDINGS.md", "docs/PRUNING.md"])
def test_tables_quoted_from_results_are_their_lines_unchanged(doc):
    """A table under a 'copied here unchanged' marker is lines of the named file, in its order: a number in the docs
    can only change by regenerating the results and copying again, never by hand."""
    text = (RESULTS.parent / doc).read_text()
    quotes = QUOTE.findall(text)
    assert doc != "README.md" or len(quotes) >= 2, "the README quotes its headline and pruning tables"
    for path, table in quotes:
        source = (RESULTS.parent / path).read_text().splitlines()
        positions = [source.index(line) if line in source else -1 for line in table.splitlines()]
        assert -1 not in positions, f"{doc} quotes a line that {path} does not hold: {table.splitlines()[positions.index(-1)]}"
        assert positions == sorted(positions), f"{doc} reorders the lines of {path}"
