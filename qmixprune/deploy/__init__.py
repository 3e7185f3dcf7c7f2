"""Deployment: ONNX export and INT8 quantization, TensorRT engines, latency on the device.

``bench`` and ``tensorrt`` need neither torch nor this package's torch parts, so that
``qmixprune bench`` runs on an edge device with only onnxruntime and numpy; nothing is
imported here for the same reason.
"""
