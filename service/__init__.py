"""cnnvis: CNN visualizations for ONNX image classifiers, served over HTTP."""

__version__ = "0.1.0"
