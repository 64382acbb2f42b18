import numpy as np
import pytest

from pocketdiff.evaluation.suite import paired_change


def test_paired_change_hand_case_and_bad_input():
    # per-image differences [+1, 0, 0, -1, +1, 0]: two gained, one lost
    new, ref = [1, 1, 0, 0, 1, 0], [0, 1, 0, 1, 0, 0]
    d = np.array(new) - np.array(ref)
    out = paired_change(new, ref)
    half = 1.96 * d.std(ddof=1) / np.sqrt(6)
    assert out["change"] == pytest.approx(1 / 6) and (out["gained"], out["lost"], out["n"]) == (2, 1, 6)
    assert out["change_ci95"] == pytest.approx([1 / 6 - half, 1 / 6 + half])
    assert paired_change([1, 0, 1], [1, 0, 1])["change_ci95"] == [0.0, 0.0]  # identical verdicts: no change, no doubt
    with pytest.raises(ValueError, match="equally long"):
        paired_change([1, 0, 1], [1, 0])
