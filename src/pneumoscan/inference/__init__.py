"""The inference layer: Predictor (decode -> one forward -> decision rules -> Prediction), the
backends it holds (ONNX Runtime in onnx.py; torch in torch_backend.py, imported only when asked
for) and the OOD gate's score. Without the training extra it imports no torch."""
