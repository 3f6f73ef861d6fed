"""Models folder -> Triton repository: graphs, servables, Triton configs, SavedModel/OpenVINO/ONNX export, repository build and check."""
