"""Feature distillation: FitNets, attention transfer, RKD, SP and PKT (CE + a feature or
relational term, as each was published), on image classifiers.

The feature term is summed over the method's (student layer → teacher layer) pairs
(:func:`kd_jax.methods.student.feature_pairs`); FitNets regresses the student's features
onto the teacher's through a learned adapter (a linear map on the channel axis, i.e. a
1×1 convolution for maps), part of the student's trainable state.
"""

from __future__ import annotations

from kd_jax.methods.base import Method
from kd_jax.methods.logit import hinton_term  # their logit term is kd's
from kd_jax.objectives import features as feature_losses

# The feature term of each feature method: fn(student_feature, teacher_feature) -> scalar.
_FEATURE_LOSSES = {
    "fitnets": feature_losses.hint_loss,
    "at": feature_losses.attention_transfer_loss,
    "rkd": feature_losses.rkd_loss,
    "sp": feature_losses.similarity_preserving_loss,
    "pkt": feature_losses.pkt_loss,
}

METHODS = {name: Method(hinton_term, ("classification",), feature_loss,
                        adapters=name == "fitnets")
           for name, feature_loss in _FEATURE_LOSSES.items()}
