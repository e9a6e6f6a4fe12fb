"""The committed feature reference matches the shipped definition."""

from pathlib import Path

from customer_lifecycle.features.definition import load_definition
from customer_lifecycle.features.docs import feature_table_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_feature_columns_doc_is_current() -> None:
    committed = (ROOT / "docs" / "feature-columns.md").read_text()
    assert committed == feature_table_markdown(load_definition()), (
        "docs/feature-columns.md is stale: run "
        "`python -m customer_lifecycle.features.docs > docs/feature-columns.md`"
    )
