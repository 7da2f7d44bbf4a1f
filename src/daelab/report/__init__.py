"""The report: one self-contained ``report.html`` (and ``report.md``) from the stages' JSON.

:func:`write_report` reads a run directory's config, metrics, evaluation and probe results and lays
them out like the study, each study number judged matched / beaten / not matched by a stated rule.
``_files`` reads the stage files and writes the report's, ``_content`` builds the blocks (what is
said; ``_dae_seeds`` those of several trained DAEs, ``_format`` the number formats), ``_rule`` judges
the study's numbers, and ``_render`` turns blocks into HTML and Markdown.
"""
from daelab.report._content import study_comparisons
from daelab.report._files import HTML_FILE, MARKDOWN_FILE, build_blocks, read_inputs, write_report
from daelab.report._rule import BEATEN, MATCHED, NOT_MATCHED, RULE, UNDETERMINED, judge, judge_sentence

__all__ = ["BEATEN", "HTML_FILE", "MARKDOWN_FILE", "MATCHED", "NOT_MATCHED", "RULE", "UNDETERMINED",
           "build_blocks", "judge", "judge_sentence", "read_inputs", "study_comparisons", "write_report"]
