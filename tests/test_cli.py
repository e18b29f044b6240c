from typer.testing import CliRunner

from hdkd.cli import app
from tests.helpers import PAPER_PARAMS


def test_info_lists_every_preset_with_the_pinned_paper_counts():
    result = CliRunner().invoke(app, ["info"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for kind, count in PAPER_PARAMS.items():
        line = next(row for row in result.output.splitlines() if f"hdkd_{kind}_paper" in row)
        assert f"{count:,}" in line
    for preset in ("small", "tiny"):
        assert f"hdkd_distilled_{preset}" in result.output
