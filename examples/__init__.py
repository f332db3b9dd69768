"""The mtut examples package: NVGesture data, I3D per modality, MTUT training."""
