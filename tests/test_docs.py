"""The README and docs/ link to files and sections that exist, so a renamed section breaks a test,
not a reader's click; and `kana <command> --help` shows each command's docstring, reflowed: its
prose as the command's help, its line of each parameter as the option's."""

import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation and symbols dropped, spaces as
    hyphens (github-slugger's rule for the text these docs use)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def section_titles(markdown_text: str) -> list[str]:
    """The `##` headings: docs/experiments.md's sections."""
    return re.findall(r"^## (.+?)\s*$", markdown_text, flags=re.M)


def anchors(markdown: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", markdown.read_text(encoding="utf-8"), flags=re.M | re.S)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M):
        anchor, n = github_anchor(heading), 1
        while anchor in found:  # GitHub numbers repeated headings
            anchor, n = f"{github_anchor(heading)}-{n}", n + 1
        found.add(anchor)
    return found


def test_the_anchor_rule_matches_githubs_on_known_headings():
    assert github_anchor("A count one stroke off the table weighs 0.3") == (
        "a-count-one-stroke-off-the-table-weighs-03")
    assert github_anchor("A ゛ written in one stroke") == "a--written-in-one-stroke"
    assert github_anchor("Each stroke moved on its own in the LSTM's training") == (
        "each-stroke-moved-on-its-own-in-the-lstms-training")
    assert github_anchor("Serving: requests sent to the models' child") == (
        "serving-requests-sent-to-the-models-child")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_local_link_reaches_a_file_and_its_section(doc):
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and anchor not in anchors(linked):
            broken.append(f"{target}: no section with that anchor in {linked.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def test_experiments_contents_lists_every_section():
    doc = ROOT / "docs" / "experiments.md"
    text = doc.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| \[[^\]]+\]\(#([^)]+)\)", text, flags=re.M))
    sections = {github_anchor(title) for title in section_titles(text)}
    assert listed == sections - {"contents"}


def test_sections_the_code_names_exist():
    """Docstrings and comments point to docs/experiments.md's sections by title."""
    sections = set(section_titles((ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")))
    named = []
    for source in sorted(p for folder in ("kana", "benchmarks", "entrypoints") for p in (ROOT / folder).glob("*.py")):
        # comments and docstrings joined into one line, so a title may wrap
        text = re.sub(r"\s*\n\s*(#\s*)?", " ", source.read_text(encoding="utf-8"))
        named += [(source.name, title) for title in re.findall(r'docs/experiments\.md, "([^"]+)"', text)]
    assert named, "the code names no section: the pattern above no longer matches how it does"
    assert [(name, title) for name, title in named if title not in sections] == []


def test_command_help_is_the_docstrings_prose_reflowed_to_the_terminal():
    """Typer's default markup kept the docstrings' own line breaks after their first paragraph, so at
    80 columns `kana preprocess --help` broke lines a few words in; and it read `[...]` as markup."""
    from typer.testing import CliRunner

    from kana.cli import app

    def words(text):  # markdown shows `code` without its backticks
        return text.replace("`", "").split()

    width, cut_short = 80, []
    for command in app.registered_commands:
        result = CliRunner().invoke(app, [command.name, "--help"], env={"COLUMNS": str(width)})
        assert result.exit_code == 0, result.output
        prose = result.output.split("[OPTIONS]", 1)[1].split("╭")[0]  # up to the options' box
        assert words(prose) == words(inspect.getdoc(command.callback)), command.name
        lines = [line.rstrip() for line in prose.splitlines()]
        cut_short += [f"{command.name}: {line.strip()!r} before {after.split()[0]!r}"
                      for line, after in zip(lines, lines[1:])
                      if line.strip() and after.strip()
                      and len(line) + 1 + len(after.split()[0]) < width - 1]
    assert cut_short == []


def test_every_option_of_every_command_has_its_docstring_line_as_help():
    """`kana <command> --help` listed each option with its type and default alone (what is
    `dataset_run_id`, `real_dir`, `patience`?). Each command's function lists every parameter,
    in its signature's order, under "Parameters:" in its docstring, and that line is the
    option's help, in `kana`'s help and in the MLflow entry point's command line."""
    import os
    import subprocess
    import sys

    import typer.main
    from typer.testing import CliRunner

    from kana.cli import app, documented_parameters

    group = typer.main.get_command(app)
    for command in app.registered_commands:
        fn = command.callback.__wrapped__
        _, lines = documented_parameters(fn)
        assert list(lines) == list(inspect.signature(fn).parameters), command.name
        assert all(lines.values()), command.name
        options = {p.name: p.help for p in group.commands[command.name].params if p.name != "help"}
        assert options == lines, command.name

    wide = {"COLUMNS": "400"}  # each option's help on one line
    shown = CliRunner().invoke(app, ["train-lstm", "--help"], env=wide).output
    entry_point = subprocess.run([sys.executable, "-m", "entrypoints.train_lstm", "--help"],
                                 cwd=ROOT, env={**os.environ, **wide}, capture_output=True,
                                 text=True, check=True).stdout
    expected = 'the preprocess run whose dataset to train on ("": the latest FINISHED one).'
    assert expected in shown and expected in entry_point  # markdown: `preprocess` without backticks


def test_a_parameter_listed_twice_is_refused_by_name():
    from kana.cli import documented_parameters

    def twice(epochs: int = 1):
        """Trains.

        Parameters:

        - `epochs`: how many.
        - `epochs`: how many again.
        """

    with pytest.raises(ValueError, match="twice's docstring lists parameter 'epochs' twice"):
        documented_parameters(twice)
