"""Benchmarks of the quantstage conversion against torch's convert_fx and ONNX Runtime (``python -m bench.run``)."""
