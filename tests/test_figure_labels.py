"""The study figure's labels: beside their points, never on another label, a marker or an error bar."""

import itertools

from mat_dist.reproduce.figure_labels import Box, place_labels

AXES = Box(0, 0, 600, 400)


def marker(x, y):
    return Box(x - 4, y - 4, x + 4, y + 4)


def test_a_lone_label_sits_right_of_its_point_at_its_height():
    (spot,) = place_labels([(100, 200)], [(40, 10)], [marker(100, 200)], AXES)
    assert (spot.side, spot.x, spot.y, spot.free) == (1, 108, 200, True)
    assert spot.box == Box(108, 195, 148, 205)


def test_a_label_goes_left_when_the_right_is_taken_or_outside_the_axes():
    wall = Box(105, 150, 300, 250)  # e.g. a neighbour's error bar and label
    (spot,) = place_labels([(100, 200)], [(40, 10)], [marker(100, 200), wall], AXES)
    assert (spot.side, spot.y, spot.box.x1) == (-1, 200, 92)
    (edge,) = place_labels([(590, 200)], [(40, 10)], [marker(590, 200)], AXES)
    assert edge.side == -1 and edge.box.inside(AXES)


def test_a_column_of_methods_at_one_cost_gets_disjoint_labels_near_their_points():
    # The study's case: fifteen methods at one cost (two columns 12 px apart on the log axis), their unions within
    # a few pixels of each other, error bars overlapping.
    points = [(300 + 12 * (i % 2), 200 + 3 * i) for i in range(15)]
    sizes = [(60, 10)] * 15
    obstacles = [marker(x, y) for x, y in points] + [Box(x - 3, y - 30, x + 3, y + 30) for x, y in points]
    spots = place_labels(points, sizes, obstacles, AXES)
    assert all(s.free and s.box.inside(AXES) for s in spots)
    for a, b in itertools.combinations(spots, 2):
        assert a.box.overlap(b.box) == 0
    for s in spots:
        assert all(s.box.overlap(o) == 0 for o in obstacles)
    # Near: both sides hold the column, so fifteen labels sit within five label heights (12 px) of their points;
    # one side alone would stack them seven and more away.
    assert {s.side for s in spots} == {1, -1}
    assert max(abs(s.y - y) for s, (_, y) in zip(spots, points)) <= 5 * 12


def test_with_no_free_spot_the_least_crowded_one_is_taken_and_said_so():
    crowd = [Box(0, 0, 600, 400)]  # the whole axes is covered
    (spot,) = place_labels([(300, 200)], [(40, 10)], crowd, AXES)
    assert spot.free is False and spot.box.inside(AXES)


def test_the_study_figure_draws_its_labels_apart_inside_the_axes_and_off_the_legend():
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.text import Text

    from mat_dist.reproduce.study import Row, study_figure

    def row(name, passes, robust):  # robust images of 500
        per_image = np.zeros(500, dtype=bool)
        per_image[:robust] = True
        return Row(name=name, method=name, seeds=[0], per_image={"all": [per_image]}, clean=[0.97], passes=passes,
                   own_passes=passes, seconds=1.0, own_seconds=1.0, images=500)

    # The study's crowd: nine methods at one cost and six at 10% more, unions a point apart, one near the legend.
    rows = ([row(f"method_{i}", 35_640, 150 + 5 * i) for i in range(9)]
            + [row(f"fine_tuned_{i}", 39_204, 152 + 5 * i) for i in range(6)]
            + [row("standard", 3_240, 0), row("dear", 106_920, 160)])
    fig = study_figure(rows, ("all",), "crowd")
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    for a in ax.texts:
        a.update_positions(renderer)  # as Annotation.get_window_extent does, before measuring its text alone
    labels = [Text.get_window_extent(a, renderer) for a in ax.texts]  # not the leader line
    assert sorted(a.get_text() for a in ax.texts) == sorted(r.name for r in rows)
    frame, legend = ax.get_window_extent(renderer), ax.get_legend().get_window_extent(renderer)
    boxes = [Box(b.x0, b.y0, b.x1, b.y1) for b in labels]
    for a, b in itertools.combinations(boxes, 2):
        assert a.overlap(b) == 0
    for b in boxes:
        assert b.inside(Box(frame.x0, frame.y0, frame.x1, frame.y1))
        assert b.overlap(Box(legend.x0, legend.y0, legend.x1, legend.y1)) == 0
    plt.close(fig)
