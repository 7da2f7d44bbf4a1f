"""The report: one self-contained ``report.html`` (and ``report.md``) from the stages' JSON.

:func:`write_report` reads a run directory's config, metrics, evaluation and probe results and lays
them out like the study, each study number judged matched / beaten / not matched by a stated rule.
``_content`` builds the blocks (what is said); ``_render`` turns them into HTML and Markdown.
"""
from daelab.report._content import (
    BEATEN,
    HTML_FILE,
    MARKDOWN_FILE,
    MATCHED,
    NOT_MATCHED,
    RULE,
    UNDETERMINED,
    build_blocks,
    judge,
    judge_sentence,
    study_comparisons,
    write_report,
)

__all__ = ["BEATEN", "HTML_FILE", "MARKDOWN_FILE", "MATCHED", "NOT_MATCHED", "RULE", "UNDETERMINED",
           "build_blocks", "judge", "judge_sentence", "study_comparisons", "write_report"]
