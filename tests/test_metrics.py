import math

import numpy as np
import pytest
import torch

from berter.metrics import dev_score, pearson, predict
from berter.tasks import TASKS, metric_column

CS224N = {name: TASKS[name] for name in ("sst", "para", "sts")}


def test_dev_score_reproduces_the_papers_best_row():
    # BERTer Table 2: SST 0.510, paraphrase 0.632, STS 0.818 -> 0.683
    score = dev_score({"sst": 0.510, "para": 0.632, "sts": 0.818}, CS224N)
    assert score == pytest.approx((0.510 + 0.632 + (0.818 + 1) / 2) / 3)
    assert abs(score - 0.683) < 1e-3  # the paper truncates 0.68367


def test_dev_score_maps_negative_correlation_below_half():
    assert dev_score({"sts": -1.0}, CS224N) == 0.0
    assert dev_score({"sts": 0.0}, CS224N) == 0.5


def test_dev_score_ignores_tasks_with_no_examples():
    assert dev_score({"sst": 0.4, "para": math.nan}, CS224N) == pytest.approx(0.4)


def test_pearson_of_a_constant_prediction_is_zero_not_nan():
    assert pearson(np.ones(5), np.arange(5)) == 0.0
    assert pearson(np.arange(5), np.arange(5) * 2.0) == pytest.approx(1.0)


def test_predict_per_task_kind():
    assert predict(TASKS["sst"], torch.tensor([[0.1, 2.0, 0, 0, 0]])).tolist() == [1]
    assert predict(TASKS["para"], torch.tensor([-0.2, 0.3])).tolist() == [0, 1]
    assert predict(
        TASKS["para"], torch.tensor([0.4, 0.6]), siamese=True, threshold=0.5
    ).tolist() == [0, 1]
    assert predict(TASKS["sts"], torch.tensor([0.9, -0.2]), siamese=True).tolist() == pytest.approx(
        [4.5, 0.0]
    )


def test_metric_columns_match_the_results_schema():
    assert [metric_column(t) for t in CS224N.values()] == ["sst_acc", "para_acc", "sts_corr"]
