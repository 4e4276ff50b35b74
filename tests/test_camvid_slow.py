"""Checks on the real CamVid data that take a while (run with: pytest -m slow)."""

import pytest

from tfseg import data
from tfseg.errors import DataError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def camvid_root():
    try:
        return data.splits.camvid_root()
    except DataError as e:
        pytest.skip(f"CamVid not found: {e}")


@pytest.mark.parametrize("split,count", [("train", 367), ("val", 101), ("test", 233)])
def test_every_camvid_file_decodes_with_valid_labels(camvid_root, split, count):
    report = data.check(data.camvid(split, root=camvid_root), verbose=0)
    assert report["examples"] == count
    assert report["sizes"] == {(360, 480): count}
    assert len(report["class_pixels"]) == 11 and min(report["class_pixels"]) > 0  # every class occurs
    assert report["ignore_pixels"] > 0  # void (11) became the ignore label
