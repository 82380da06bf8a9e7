"""The README's configuration table is generated from the code; it must not drift."""

import re
from pathlib import Path

from pipeline.config import reference_markdown
from workers.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_configuration_reference_is_current() -> None:
    text = README.read_text()
    m = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", text,
                  re.DOTALL)
    assert m, "README lacks the config-reference markers"
    assert m.group(1).strip() == reference_markdown(Settings).strip(), (
        "README's configuration table is stale: paste `adstream config --reference` "
        "between the config-reference markers")


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in README.read_text() and "exec make test" in ci
