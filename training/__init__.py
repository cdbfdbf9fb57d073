"""The training companion: labelled images in, ONNX models + model cards + readiness reports out.

Needs the `train` extra (torch, albumentations, scikit-learn, ...) and, for detectors,
`train-yolo` (Ultralytics, AGPL-3.0). The service never imports this package.
"""
