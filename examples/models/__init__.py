"""Networks of the MTUT examples: I3D and loading converted Kinetics checkpoints.

Public API::

    from examples.models import I3D, load_i3d_weights
    net = I3D(num_classes=25, in_channels=1, width=1.0)
    report = load_i3d_weights(net, "model_rgb.pth")   # stem averaged over RGB, classifier skipped
    logits, feats = net.extract(clip, endpoints=("Mixed_4f", "Mixed_5c"))
"""

from .i3d import ENDPOINTS, I3D, Mixed, Unit3D, same_padding
from .weights import I3DWeightsError, LoadReport, adapt_stem, load_i3d_state_dict, load_i3d_weights

__all__ = [
    "ENDPOINTS",
    "I3D",
    "I3DWeightsError",
    "LoadReport",
    "Mixed",
    "Unit3D",
    "adapt_stem",
    "load_i3d_state_dict",
    "load_i3d_weights",
    "same_padding",
]
