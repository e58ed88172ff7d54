"""export: turn mobilekd student checkpoints into ONNX, TFLite and Core ML files with parity gates."""
