"""The rule that judges each of the study's numbers against ours: matched, beaten or not matched.

A study number is matched when it lies inside our 95% interval, beaten when our whole interval is
on the better side of it, not matched otherwise; with fewer than two samples there is no interval
and the comparison is undetermined. :mod:`daelab.report` states the rule on the page and applies it.
"""
from __future__ import annotations

MATCHED, BEATEN, NOT_MATCHED, UNDETERMINED = "matched", "beaten", "not matched", "undetermined"
RULE = ("**Rule:** a study number is **matched** when it lies inside our 95% interval, **beaten** when our "
        "whole interval is on the better side of it (lower R_loss, higher accuracy), and **not matched** "
        "otherwise. The interval is the widest our design has: for an accuracy, over DAE seeds x classifier seeds "
        "x test images (the one the probe's verdicts rest on); for R_loss, over DAE seeds x test images where "
        "several DAEs were evaluated. An interval needs at least two samples; with one the comparison is "
        "undetermined.")


# ------------------------------------------------------------------------------- the rule
def judge(study_value: float, ours: dict | None, higher_is_better: bool) -> str:
    """Matched / beaten / not matched: where ``study_value`` lies against our interval ``ours``.

    Parameters
    ----------
    study_value : the study's number.
    ours : a :func:`daelab.stats.mean_ci` dict (``mean``, ``lo``, ``hi``).
    higher_is_better : True for accuracies, False for losses.
    """
    if not ours or ours.get("lo") is None or ours.get("hi") is None or ours.get("n", 2) < 2:
        return UNDETERMINED
    lo, hi = ours["lo"], ours["hi"]
    if lo <= study_value <= hi:
        return MATCHED
    better = lo > study_value if higher_is_better else hi < study_value
    return BEATEN if better else NOT_MATCHED


def judge_sentence(what: str, study_value: float, ours: dict | None, higher_is_better: bool, digits: int = 4,
                   over: str = "") -> str:
    """One sentence stating the verdict of :func:`judge` and why; ``over`` says what our interval is over."""
    verdict = judge(study_value, ours, higher_is_better)
    sv = f"{study_value:.{digits}f}"
    if verdict == UNDETERMINED:
        return f"The study's {what} ({sv}) cannot be judged: we have no interval for it."
    interval = f"{ours['mean']:.4f} [{ours['lo']:.4f}, {ours['hi']:.4f}]" + (f" over {over}" if over else "")
    if verdict == MATCHED:
        return f"The study's {what} ({sv}) lies inside ours, {interval}: **matched**."
    above = (verdict == BEATEN) == higher_is_better
    return (f"The study's {what} is {sv}; ours, {interval}, lies entirely {'above' if above else 'below'} it: "
            f"**{verdict}**.")
