"""The robot-side policy runtime: ONNX inference, chunk execution, safety layer
(imported as apprentice.policy_server; needs onnxruntime + numpy, never torch)."""
