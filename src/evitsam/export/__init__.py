"""Deployment graphs: the model as SAM-compatible ONNX encoder and decoders (the runtimes run them too)."""

from .onnx_export import export_onnx

__all__ = ["export_onnx"]
