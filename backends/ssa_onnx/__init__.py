"""ONNX backend of ssa: .onnx files converted with onnx2torch, checked against onnxruntime."""
