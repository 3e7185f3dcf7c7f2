import dataclasses
from pathlib import Path

import pytest

from qmixprune import configdoc
from qmixprune.run.config import CompressConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_lists_every_config_key():
    text = README.read_text()
    assert configdoc.render(text) == text, (
        "README.md is out of date: run python -m qmixprune.configdoc --write README.md"
    )
    keys = {r[0] for r in configdoc.rows(CompressConfig)}
    assert {"target_flops", "search.episodes", "search.env.round_to", "distill.alpha"} <= keys
    assert all(f"| `{k}` |" in text for k in keys)


def test_comments_document_fields_and_nested_keys_flatten():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        depth: int = 3  # how deep
        # spread over
        # two lines
        width: float | None = None

    @dataclasses.dataclass(frozen=True)
    class Outer:
        name: str = "x"
        inner: Inner = dataclasses.field(default_factory=Inner)

    rows = configdoc.rows(Outer)
    assert rows == [
        ("name", "str", "'x'", ""),
        ("inner.depth", "int", "3", "how deep"),
        ("inner.width", "float | None", "None", "spread over two lines"),
    ]


def test_write_and_check(tmp_path, capsys):
    doc = tmp_path / "R.md"
    doc.write_text(f"intro\n{configdoc.START}\nstale\n{configdoc.END}\noutro\n")
    assert configdoc.main(["--check", str(doc)]) == 1
    assert "--write" in capsys.readouterr().err
    assert configdoc.main(["--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text
    assert configdoc.main(["--check", str(doc)]) == 0
    doc.write_text("no markers\n")
    assert configdoc.main(["--write", str(doc)]) == 2
    with pytest.raises(ValueError, match="markers"):
        configdoc.render("nothing")
