import numpy as np
from PIL import Image

from tfseg.data.info import DatasetInfo
from tfseg.report import colourize, overlay_panel, pareto_front, plot_confusion, plot_curves, plot_pareto, save_png

INFO = DatasetInfo("t", ("a", "b", "c"), ((255, 0, 0), (0, 255, 0), (0, 0, 255)))


def test_colourize_uses_palette_and_black_for_ignore():
    labels = np.array([[0, 1], [2, 255]])
    rgb = colourize(labels, INFO)
    assert rgb.tolist() == [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 0, 0]]]


def test_overlay_panel_is_image_truth_prediction_side_by_side(tmp_path):
    image = np.full((100, 125, 3), 200, np.uint8)
    truth = np.zeros((200, 250), np.int32)
    truth[:, 125:] = 2
    pred = np.ones((200, 250), np.int32)
    panel = overlay_panel(image, truth, pred, INFO)
    assert panel.shape == (200, 3 * 250 + 2 * 4, 3)  # image upsampled to the label size
    assert panel[0, 254 + 5].tolist() == [255, 0, 0]  # ground-truth panel shows class a ...
    assert panel[0, 254 + 200].tolist() == [0, 0, 255]  # ... and class c on its right half
    path = save_png(tmp_path / "o.png", panel)
    assert np.array_equal(np.asarray(Image.open(path)), panel)


def test_small_overlays_are_enlarged_without_blurring_labels():
    truth = np.array([[0, 1], [2, 255]])
    panel = overlay_panel(np.zeros((2, 2, 3), np.uint8), truth, truth, INFO)
    assert panel.shape[0] == 200 and panel.shape[1] == 3 * 200 + 2 * 4
    gt = panel[:, 204:404]
    assert gt[99, 99].tolist() == [255, 0, 0] and gt[100, 100].tolist() == [0, 0, 0]  # sharp edge


def test_plots_are_written(tmp_path):
    (tmp_path / "log.csv").write_text("epoch,loss,miou,val_loss,val_miou\n0,1.0,0.2,1.1,0.1\n1,0.5,0.4,0.7,0.3\n")
    assert plot_curves(tmp_path / "log.csv", tmp_path / "curves.png").stat().st_size > 1000
    cm = np.array([[5, 1, 0], [0, 3, 1], [2, 0, 9]])
    img = Image.open(plot_confusion(cm, INFO.class_names, tmp_path / "cm.png"))
    assert img.size[0] > 100 and img.size[1] > 100


def test_pareto_front_keeps_only_undominated_points_and_is_plotted(tmp_path):
    points = [{"label": "fast", "latency_ms": 5.0, "miou": 0.40, "group": "hand"},
              {"label": "slow_good", "latency_ms": 9.0, "miou": 0.55, "group": "hand"},
              {"label": "dominated", "latency_ms": 7.0, "miou": 0.39, "group": "hand"},
              {"label": "tie_slower", "latency_ms": 6.0, "miou": 0.40, "group": "searched"},
              {"label": "middle", "latency_ms": 7.0, "miou": 0.50, "group": "searched"}]
    assert [p["label"] for p in pareto_front(points)] == ["fast", "middle", "slow_good"]
    out = plot_pareto(points, tmp_path / "pareto.png", title="t")
    assert out.exists() and out.stat().st_size > 1000
