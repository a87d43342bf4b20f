"""downstream.canvas on synthetic images: canvases made from the seed and index alone, whose
boxes, labels, masks and pixels all say where each pasted image is, and the batches made of
them for detection and segmentation models."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from downstream.canvas import (
    Canvas,
    CanvasDataset,
    canvas_seed,
    collate_detection,
    collate_segmentation,
)

IMAGES = torch.randint(
    0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
)
LABELS = torch.arange(20) % 10
SIZE = 64


def dataset(length: int = 30, seed: int = 1, **kwargs) -> CanvasDataset:
    return CanvasDataset(IMAGES, LABELS, length, seed, **{"size": SIZE, **kwargs})


@pytest.fixture(scope="module")
def canvases() -> list[Canvas]:
    """The canvases of dataset(), made once for the tests that only look at them."""
    return list(dataset())


def objects(canvas: Canvas):
    """((x1, y1, x2, y2), label, source) of each object of a canvas, as ints."""
    columns = (canvas.boxes.long().tolist(), canvas.labels.tolist(), canvas.sources.tolist())
    return zip(*columns, strict=True)


def assert_same(first: Canvas, second: Canvas) -> None:
    for name, a, b in zip(Canvas._fields, first, second, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_canvas_fields_shapes_and_dtypes():
    canvas = dataset()[0]
    k = len(canvas.labels)
    assert canvas.image.shape == (3, SIZE, SIZE) and canvas.image.dtype == torch.uint8
    assert canvas.boxes.shape == (k, 4) and canvas.boxes.dtype == torch.float32
    assert canvas.labels.dtype == torch.int64
    assert canvas.mask.shape == (SIZE, SIZE) and canvas.mask.dtype == torch.int64
    assert canvas.sources.shape == (k,) and canvas.sources.dtype == torch.int64
    assert len(dataset(length=7)) == 7
    assert dataset().num_classes == 10 and dataset().num_labels == 11


def test_same_seed_and_index_give_the_same_canvas_in_any_order():
    forward = dataset()
    first = [forward[i] for i in range(10)]
    backward = dataset()
    torch.manual_seed(123)  # the global random state plays no part
    second = [backward[i] for i in reversed(range(10))][::-1]
    for a, b in zip(first, second, strict=True):
        assert_same(a, b)
    # Asked again, and from a dataset of another length: the same canvas.
    assert_same(forward[3], first[3])
    assert_same(dataset(length=5)[3], first[3])


def test_another_seed_or_index_gives_another_canvas():
    canvases = [dataset(seed=1)[0], dataset(seed=2)[0], dataset(seed=1)[1]]
    for a, b in itertools.combinations(canvases, 2):
        assert not torch.equal(a.image, b.image)


def test_canvas_seed_mixes_seed_and_index():
    seeds = {canvas_seed(seed, index) for seed in range(-3, 30) for index in range(30)}
    assert len(seeds) == 33 * 30
    assert all(0 <= seed < 2**64 for seed in seeds)


def test_negative_index_counts_from_the_end_and_out_of_range_is_an_index_error():
    canvases = dataset(length=5)
    assert_same(canvases[-1], canvases[4])
    with pytest.raises(IndexError):
        canvases[5]
    with pytest.raises(IndexError):
        canvases[-6]


def test_masks_are_the_boxes_filled_with_their_labels(canvases):
    for canvas in canvases:
        expected = torch.zeros(SIZE, SIZE, dtype=torch.int64)
        for (x1, y1, x2, y2), label, _ in objects(canvas):
            expected[y1:y2, x1:x2] = label
        assert torch.equal(canvas.mask, expected)
        # No object overlaps another: the mask covers the boxes' areas added up.
        sides = canvas.boxes[:, 2] - canvas.boxes[:, 0]
        assert int((canvas.mask != 0).sum()) == int((sides**2).sum())


def test_objects_do_not_overlap():
    for canvas in dataset(length=20, max_objects=5, object_sizes=(8, 30)):
        for a, b in itertools.combinations(canvas.boxes.tolist(), 2):
            apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            assert apart, (a, b)


def test_boxes_are_squares_inside_the_canvas_with_sides_in_object_sizes(canvases):
    for canvas in canvases:
        boxes = canvas.boxes
        assert torch.equal(boxes, boxes.round())
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= SIZE).all()
        sides = boxes[:, 2:] - boxes[:, :2]
        assert torch.equal(sides[:, 0], sides[:, 1])
        assert ((sides >= 24) & (sides <= 48)).all()


def test_object_counts_cover_one_to_max_objects():
    counts = {len(canvas.labels) for canvas in dataset(length=20, object_sizes=(8, 12))}
    assert counts == {1, 2, 3}
    counts = {len(canvas.labels) for canvas in dataset(length=10, max_objects=1)}
    assert counts == {1}


def test_objects_without_room_are_left_out_but_one_always_fits():
    # Objects of side 33 or more, two of which add up to more than 64 pixels both ways: a
    # second one never fits beside the first on a 64-pixel canvas.
    for canvas in dataset(length=20, max_objects=4, object_sizes=(33, 40)):
        assert len(canvas.labels) == 1


def test_labels_are_the_source_labels_plus_one(canvases):
    for canvas in canvases:
        assert ((canvas.sources >= 0) & (canvas.sources < len(IMAGES))).all()
        assert torch.equal(canvas.labels, LABELS[canvas.sources] + 1)
    sources = torch.cat([canvas.sources for canvas in canvases])
    assert len(sources.unique()) > 10


def test_pixels_in_a_box_are_the_resized_source_image(canvases):
    for canvas in canvases:
        for (x1, y1, x2, y2), _, source in objects(canvas):
            resized = F.interpolate(
                IMAGES[source][None].float(),
                size=(y2 - y1, x2 - x1),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0]
            expected = resized.round().clamp(0, 255).to(torch.uint8)
            assert torch.equal(canvas.image[:, y1:y2, x1:x2], expected)


def test_objects_of_the_source_size_are_pasted_unchanged():
    for canvas in dataset(length=10, object_sizes=(32, 32)):
        for (x1, y1, x2, y2), _, source in objects(canvas):
            assert torch.equal(canvas.image[:, y1:y2, x1:x2], IMAGES[source])


def test_background_is_not_a_flat_colour():
    for canvas in dataset(length=10):
        background = canvas.image[:, canvas.mask == 0]  # [3, pixels]
        assert len(background.unique(dim=1)) > 1
        assert len(background.T.unique(dim=0)) > 50  # many distinct colours
    # Each canvas has its own background.
    first, second = dataset(max_objects=1)[0], dataset(max_objects=1)[1]
    assert not torch.equal(first.image[:, :2, :2], second.image[:, :2, :2])


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"images": IMAGES.float()}, "images"),
        ({"images": IMAGES[0]}, "images"),
        ({"images": IMAGES[:, :1]}, "images"),
        ({"images": IMAGES[:0], "labels": LABELS[:0]}, "images"),
        ({"labels": LABELS[:, None]}, "labels"),
        ({"labels": LABELS[:5]}, "labels"),
        ({"labels": LABELS.float()}, "labels"),
        ({"labels": LABELS + 1}, "labels"),
        ({"labels": LABELS - 1}, "labels"),
        ({"num_classes": 0}, "num_classes"),
        ({"length": 0}, "length"),
        ({"max_objects": 0}, "max_objects"),
        ({"object_sizes": (0, 8)}, "object_sizes"),
        ({"object_sizes": (16, 8)}, "object_sizes"),
        ({"object_sizes": (8, 16, 24)}, "object_sizes"),
        ({"size": 47}, "^size"),
    ],
)
def test_argument_errors_name_the_argument(changes, named):
    arguments = {
        "images": IMAGES,
        "labels": LABELS,
        "length": 4,
        "seed": 0,
        "size": 64,
        "object_sizes": (24, 48),
        **changes,
    }
    with pytest.raises(ValueError, match=named):
        CanvasDataset(**arguments)


def test_collate_detection():
    canvases = [dataset()[i] for i in range(3)]
    images, targets = collate_detection(canvases)
    assert len(images) == len(targets) == 3
    for image, target, canvas in zip(images, targets, canvases, strict=True):
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1
        torch.testing.assert_close(image * 255, canvas.image.float())
        assert set(target) == {"boxes", "labels"}
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64
        assert torch.equal(target["boxes"], canvas.boxes)
        assert torch.equal(target["labels"], canvas.labels)


def test_collate_segmentation_through_a_data_loader():
    loader = torch.utils.data.DataLoader(
        dataset(length=6), batch_size=4, collate_fn=collate_segmentation
    )
    images, masks = next(iter(loader))
    assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert masks.shape == (4, SIZE, SIZE) and masks.dtype == torch.int64
    assert torch.equal(masks[2], dataset()[2].mask)
    torch.testing.assert_close(images[2] * 255, dataset()[2].image.float())
