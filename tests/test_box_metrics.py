"""downstream.metrics against scores worked out by hand: COCO's box mean average precision
(greedy matching by score, 101-point interpolated precision, classes without ground truth
left out) and the confusion matrix's mean IoU and pixel accuracy."""

import pytest
import torch

from downstream.metrics import COCO_IOU_THRESHOLDS, ConfusionMatrix, box_average_precision

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]
C = [40.0, 0.0, 50.0, 10.0]


def detected(boxes, scores, labels) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def truth(boxes, labels) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def ap(detections, targets, num_classes=3, **kwargs) -> dict[str, float]:
    return box_average_precision(detections, targets, num_classes, **kwargs)


def test_thresholds_are_cocos_ten():
    expected = 0.5 + 0.05 * torch.arange(10, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(COCO_IOU_THRESHOLDS, dtype=torch.float64), expected)


def test_perfect_detector_scores_one():
    targets = [truth([A, B], [1, 2]), truth([C], [3]), truth([A, C], [2, 2])]
    detections = [
        detected([B, A], [0.3, 0.9], [2, 1]),
        detected([C], [0.1], [3]),
        detected([A, C], [0.5, 0.6], [2, 2]),
    ]
    assert ap(detections, targets) == {"map50": 1.0, "map": 1.0}


def test_no_detections_score_zero():
    targets = [truth([A, B], [1, 2]), truth([C], [3])]
    detections = [detected([], [], []), detected([], [], [])]
    assert ap(detections, targets) == {"map50": 0.0, "map": 0.0}


def test_detection_with_the_wrong_label_does_not_count():
    # Class 2 has no ground truth and is left out: class 1's AP alone is the mean.
    scores = ap([detected([A], [0.9], [2])], [truth([A], [1])])
    assert scores == {"map50": 0.0, "map": 0.0}


def test_wrong_label_scored_higher_does_not_take_the_right_ones_match():
    scores = ap([detected([A, A], [0.9, 0.5], [2, 1])], [truth([A], [1])])
    assert scores == {"map50": 1.0, "map": 1.0}


@pytest.mark.parametrize("split_images", [False, True])
def test_duplicate_detection_is_a_false_positive(split_images):
    # Two objects; detections by score: 0.9 hits A, 0.8 duplicates A (a miss), 0.7 hits B.
    # Recall 1/2, 1/2, 1; precision 1, 1/2, 2/3, made non-increasing: 1, 2/3, 2/3.
    # Recalls 0..0.50 (51 points) read 1, recalls 0.51..1 (50 points) read 2/3.
    expected = (51 * 1 + 50 * 2 / 3) / 101  # 253/303 = 0.8350
    if split_images:
        targets = [truth([A], [1]), truth([B], [1])]
        detections = [detected([A, A], [0.9, 0.8], [1, 1]), detected([B], [0.7], [1])]
    else:
        targets = [truth([A, B], [1, 1])]
        detections = [detected([A, A, B], [0.9, 0.8, 0.7], [1, 1, 1])]
    scores = ap(detections, targets)
    assert scores["map50"] == pytest.approx(expected, abs=1e-12)
    assert scores["map"] == pytest.approx(expected, abs=1e-12)


def test_duplicate_scored_below_every_hit_costs_nothing():
    # Precision 1, 1, 2/3 at recalls 1/2, 1, 1: every recall point reads 1.
    scores = ap([detected([A, B, A], [0.9, 0.8, 0.7], [1, 1, 1])], [truth([A, B], [1, 1])])
    assert scores == {"map50": 1.0, "map": 1.0}


def test_precision_is_made_non_increasing_before_sampling():
    # Three objects; hit, miss, hit, hit: recall 1/3, 1/3, 2/3, 1, precision 1, 1/2, 2/3, 3/4,
    # made non-increasing: 1, 3/4, 3/4, 3/4. Recalls 0..0.33 (34 points) read 1, the 67 others
    # 3/4 (the raw precision 2/3 at recall 2/3 is raised to the 3/4 after it).
    targets = [truth([A, B, C], [1, 1, 1])]
    wrong = [60.0, 60.0, 70.0, 70.0]
    detections = [detected([A, wrong, B, C], [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1])]
    expected = (34 * 1 + 67 * 3 / 4) / 101
    assert ap(detections, targets)["map50"] == pytest.approx(expected, abs=1e-12)


def test_scores_not_the_order_given_rank_detections():
    # The same detections as above, given shuffled.
    targets = [truth([A, B, C], [1, 1, 1])]
    wrong = [60.0, 60.0, 70.0, 70.0]
    detections = [detected([C, B, wrong, A], [0.6, 0.7, 0.8, 0.9], [1, 1, 1, 1])]
    expected = (34 * 1 + 67 * 3 / 4) / 101
    assert ap(detections, targets)["map50"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("width", "thresholds_passed"),
    [
        (4.9, 0),  # IoU 0.49: below 0.5
        (5.0, 1),  # IoU 0.50 exactly: a match at 0.5 (IoU >= threshold)
        (5.9, 2),  # IoU 0.59: 0.5 and 0.55
        (6.0, 3),  # IoU 0.60 exactly: 0.5, 0.55 and 0.6
        (6.1, 3),  # IoU 0.61
        (9.6, 10),  # IoU 0.96: every threshold
    ],
)
def test_iou_counts_at_the_thresholds_it_reaches(width, thresholds_passed):
    # Class 1 has one object, found by a box inside it of IoU width / 10; class 2 is perfect.
    targets = [truth([A, B], [1, 2])]
    detections = [detected([[0.0, 0.0, width, 10.0], B], [0.9, 0.9], [1, 2])]
    scores = ap(detections, targets)
    assert scores["map50"] == pytest.approx((1 + (thresholds_passed > 0)) / 2, abs=1e-12)
    assert scores["map"] == pytest.approx((1 + thresholds_passed / 10) / 2, abs=1e-12)


def test_detection_matches_the_best_ground_truth_not_yet_matched():
    # Two objects of class 1, rows 0..10 and 4..14. The first detection takes the first one;
    # the second overlaps the first one most (IoU 90/110) but it is taken, so it matches the
    # second one (IoU 70/130 = 0.54) at threshold 0.5 and nothing from 0.55 on, where it is a
    # false positive: recall 1/2, 1/2 and precision 1, 1/2, which reads 1 at 51 points of 101.
    targets = [truth([A, [0.0, 4.0, 10.0, 14.0]], [1, 1])]
    detections = [detected([A, [0.0, 1.0, 10.0, 11.0]], [0.9, 0.8], [1, 1])]
    scores = ap(detections, targets)
    assert scores["map50"] == 1.0
    assert scores["map"] == pytest.approx((1 + 9 * 51 / 101) / 10, abs=1e-12)


def test_classes_without_ground_truth_are_left_out():
    # Class 1 is found; class 2 has only false positives and no ground truth; classes 3..10
    # have neither. The mean is class 1's alone.
    targets = [truth([A], [1]), truth([], [])]
    detections = [detected([A, B], [0.9, 0.95], [1, 2]), detected([C], [0.8], [2])]
    assert ap(detections, targets, num_classes=10) == {"map50": 1.0, "map": 1.0}


def test_a_class_missed_entirely_counts_as_zero():
    targets = [truth([A, B], [1, 2])]
    scores = ap([detected([A], [0.9], [1])], targets)
    assert scores == {"map50": 0.5, "map": 0.5}


def test_map_over_the_thresholds_given():
    targets = [truth([A], [1])]
    detections = [detected([[0.0, 0.0, 6.0, 10.0]], [0.9], [1])]
    assert ap(detections, targets, iou_thresholds=(0.5, 0.7)) == {"map50": 1.0, "map": 0.5}


def test_errors():
    one = [truth([A], [1])]
    found = [detected([A], [0.9], [1])]
    with pytest.raises(ValueError, match="no class has ground truth"):
        ap([detected([A], [0.9], [1])], [truth([], [])])
    with pytest.raises(ValueError, match="no class has ground truth"):
        ap([], [])
    with pytest.raises(ValueError, match="one per image"):
        ap(found * 2, one)
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] must be in 1..3"):
        ap(found, [truth([A], [0])])
    with pytest.raises(ValueError, match=r"detections\[0\]\['labels'\] must be in 1..3"):
        ap([detected([A], [0.9], [4])], one)
    with pytest.raises(ValueError, match="as many"):
        ap([detected([A, B], [0.9], [1, 1])], one)
    with pytest.raises(ValueError, match=r"must be \[n, 4\]"):
        ap([{**found[0], "boxes": torch.zeros(1, 5)}], one)
    with pytest.raises(ValueError, match=r"must include 0\.5"):
        ap(found, one, iou_thresholds=(0.55, 0.6))
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        ap(found, one, iou_thresholds=(0.5, 1.5))


# The confusion matrix's example: target and predicted labels of six pixels, in two batches.
TARGET = torch.tensor([[[0, 0, 1]], [[1, 2, 2]]])
PREDICTED = torch.tensor([[[0, 1, 1]], [[1, 2, 0]]])
# Rows: target label, columns: predicted label.
MATRIX = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def counted(num_labels: int) -> ConfusionMatrix:
    confusion = ConfusionMatrix(num_labels)
    for predicted, target in zip(PREDICTED, TARGET, strict=True):
        confusion.update(predicted[None], target[None])
    return confusion


def test_confusion_matrix_counts_target_rows_and_predicted_columns():
    confusion = counted(3)
    assert confusion.matrix.dtype == torch.int64
    assert confusion.matrix.tolist() == MATRIX


def test_mean_iou_and_pixel_accuracy_by_hand():
    # IoU: label 0: 1 / (2 + 2 - 1) = 1/3; label 1: 2 / (2 + 3 - 2) = 2/3; label 2:
    # 1 / (2 + 1 - 1) = 1/2; the mean 1/2. Four pixels of six are right.
    confusion = counted(3)
    torch.testing.assert_close(
        confusion.iou(), torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64)
    )
    assert confusion.mean_iou() == pytest.approx(0.5, abs=1e-12)
    assert confusion.pixel_accuracy() == pytest.approx(4 / 6, abs=1e-12)


def test_labels_never_seen_are_left_out_of_the_mean():
    confusion = counted(5)
    assert confusion.iou()[3:].isnan().all()
    assert confusion.mean_iou() == pytest.approx(0.5, abs=1e-12)


def test_label_only_predicted_counts_with_iou_zero():
    confusion = counted(4)
    confusion.update(torch.tensor([3, 0]), torch.tensor([0, 0]))
    # Label 0 now: 2 / (4 + 3 - 2) = 2/5; label 3: 0 / 1.
    assert confusion.mean_iou() == pytest.approx((2 / 5 + 2 / 3 + 1 / 2 + 0) / 4, abs=1e-12)
    assert confusion.pixel_accuracy() == pytest.approx(5 / 8, abs=1e-12)


def test_confusion_matrix_errors():
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="no pixels counted"):
        confusion.mean_iou()
    with pytest.raises(ValueError, match=r"predicted must be labels in 0..2"):
        confusion.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"target must be labels in 0..2"):
        confusion.update(torch.tensor([0]), torch.tensor([-1]))
    with pytest.raises(ValueError, match="one shape"):
        confusion.update(torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        confusion.update(torch.zeros(2), torch.zeros(2, dtype=torch.int64))
    assert confusion.matrix.sum() == 0
