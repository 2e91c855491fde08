"""Deployment: SAM-compatible ONNX graphs and the ONNX Runtime / OpenVINO engines behind ``SamPredictor``."""

from .onnx_export import export_onnx

__all__ = ["export_onnx"]
