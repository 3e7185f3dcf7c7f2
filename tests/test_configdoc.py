import dataclasses
from pathlib import Path

import pytest

from qmixprune import configdoc
from qmixprune.run.config import CompressConfig

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


def test_reference_lists_every_config_key_and_preset():
    text = REFERENCE.read_text()
    # both generated blocks live there: a missing presets block would go unchecked
    assert configdoc.PRESETS_START in text and configdoc.PRESETS_END in text
    assert configdoc.render(text) == text, (
        "docs/reference.md is out of date: run python -m qmixprune.configdoc --write "
        "docs/reference.md"
    )
    keys = {r[0] for r in configdoc.rows(CompressConfig)}
    assert {"target_flops", "search.episodes", "search.env.round_to", "distill.alpha"} <= keys
    assert all(f"| `{k}` |" in text for k in keys)
    assert all(f"| `{name}` |" in text for name in ("quick", "default", "thorough"))


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
