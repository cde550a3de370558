"""Pictures of a stream's results (accuracy-matrix heatmap, accuracy curves) as ``uint8`` tensors and PNG files."""

from lightning_cl.viz.plots import accuracy_curves_image, accuracy_matrix_image
from lightning_cl.viz.png import encode_png, write_png

__all__ = ["accuracy_curves_image", "accuracy_matrix_image", "encode_png", "write_png"]
