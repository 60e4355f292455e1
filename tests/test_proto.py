from pathlib import Path

from tools import proto as generate


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    # given the committed generated code, when it is regenerated from proto/ now
    fresh = generate.generate(tmp_path)
    # then every file is byte for byte what is committed (run `make proto` if not)
    assert fresh
    for path in fresh:
        committed = generate.OUT_DIR / path.relative_to(tmp_path)
        assert committed.read_text() == path.read_text(), f"stale: {committed}; run make proto"
