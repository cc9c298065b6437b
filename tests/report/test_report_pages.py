from __future__ import annotations

from regprune.report import write_generated_block

START, END = "<!-- start -->", "<!-- end -->"


def test_a_block_is_appended_then_replaced_and_the_prose_around_it_stays(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nA reading someone wrote.\n")
    write_generated_block(page, "| a |\n|---|", start=START, end=END, heading="## Results")
    first = page.read_text()
    assert first.startswith("# Title\n\nA reading someone wrote.\n\n## Results\n\n<!-- start -->")
    assert first.endswith("| a |\n|---|\n<!-- end -->\n")
    page.write_text(first + "\nMore prose after the block.\n")
    write_generated_block(page, "| b |\n|---|", start=START, end=END, heading="## Results")
    second = page.read_text()
    assert "| a |" not in second and "| b |" in second
    assert second.count("## Results") == 1 and second.endswith("More prose after the block.\n")


def test_a_missing_page_is_created(tmp_path):
    page = tmp_path / "new.md"
    write_generated_block(page, "text", start=START, end=END)
    assert page.read_text() == f"\n\n{START}\ntext\n{END}\n"
