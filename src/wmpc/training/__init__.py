"""Training-only code (imports torch): dataset from bags, model, training, ONNX export, INT8."""
