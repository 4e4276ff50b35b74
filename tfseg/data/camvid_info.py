"""CamVid (SegNet's 11-class, 360x480 version): class names, colours, void value, split folders."""

from tfseg.data.info import DatasetInfo

CAMVID_INFO = DatasetInfo(
    name="camvid",
    class_names=(
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    ),
    palette=(
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ),
)
# The value CamVid masks use for unlabelled pixels; readers map it to IGNORE_LABEL.
CAMVID_VOID = 11
# split name -> (image folder, mask folder) in the SegNet layout.
CAMVID_SPLITS = {
    "train": ("train", "trainannot"),
    "val": ("val", "valannot"),
    "test": ("test", "testannot"),
}
