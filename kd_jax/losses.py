"""``kd_jax.losses``: the public face of the objectives (re-exports only).

Logit losses from :mod:`kd_jax.objectives.losses`, feature and relational losses from
:mod:`kd_jax.objectives.features`, the large-vocabulary form from
:mod:`kd_jax.objectives.fused_linear` and the masked mean of them all from
:mod:`kd_jax.objectives.masked`.
"""

from kd_jax.objectives.features import (attention_transfer_loss,  # noqa: F401
                                        hidden_state_loss, hint_loss, pkt_loss, rkd_loss,
                                        similarity_preserving_loss)
from kd_jax.objectives.fused_linear import fused_linear_kd_loss  # noqa: F401
from kd_jax.objectives.losses import (cross_entropy, dkd_loss, kd_loss,  # noqa: F401
                                      kd_per_position)
from kd_jax.objectives.masked import masked_mean, masked_sum  # noqa: F401
