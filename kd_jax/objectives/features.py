"""Feature and relational distillation losses: FitNets, AT, RKD, SP, PKT, DistilBERT's.

Every loss returns a float32 scalar, the mean over the rows (or tokens) the optional
boolean ``mask`` selects; for the batch-relational losses (RKD, SP, PKT) the mask
selects the rows that take part in the relations. Feature maps are NHWC (JAX layout),
embeddings ``[B, D]``; student and teacher widths may differ wherever the formula
allows. Inputs may be bfloat16; computation is in float32.
"""

import jax
import jax.numpy as jnp
import optax

from kd_jax.objectives import divergences
from kd_jax.objectives.masked import at_least_float32 as _f32
from kd_jax.objectives.masked import masked_mean as _masked_mean

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

def _l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """x / max(‖x‖, eps), with finite gradients at x = 0 (unlike x / sqrt(Σx²))."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def hint_loss(student_features: ArrayLike, teacher_features: ArrayLike, *,
              mask: ArrayLike | None = None) -> Array:
  r"""FitNets hint loss: mean squared error between (adapted) feature maps.

  .. math:: \ell = \operatorname{mean}\,(f_s - f_t)^2

  The mean runs over every element; with a mask, over the elements of the
  unmasked leading positions. The adapter mapping the student width to the
  teacher's is part of the student model, so shapes must match here.

  Args:
    student_features: ``[B, ...]`` (e.g. NHWC ``[B, H, W, C]`` or ``[B, D]``).
    teacher_features: same shape.
    mask: optional boolean leading prefix, e.g. ``[B]``.

  Returns:
    float32 scalar.

  References:
    Romero et al., *FitNets: Hints for Thin Deep Nets*, ICLR 2015.

  Example:
    >>> float(hint_loss(jnp.ones((2, 4)), jnp.zeros((2, 4))))
    1.0
  """
  s, t = _f32(student_features), _f32(teacher_features)
  if s.shape != t.shape:
    raise ValueError(f"hint_loss needs equal shapes (adapt the student first); "
                     f"got student {s.shape} and teacher {t.shape}")
  sq = jnp.square(s - t)
  lead = 1 if mask is None else jnp.ndim(mask)
  return _masked_mean(jnp.mean(sq, axis=tuple(range(lead, sq.ndim))), mask)


def _attention_map(f: Array, p: float) -> Array:
  """[B, H, W, C] -> L2-normalised [B, H·W] of the channel mean of |f|^p."""
  a = jnp.mean(jnp.abs(f) ** p, axis=-1)
  return _l2_normalize(a.reshape(a.shape[0], -1))


def attention_transfer_loss(student_features: ArrayLike,
                            teacher_features: ArrayLike, p: float = 2, *,
                            mask: ArrayLike | None = None) -> Array:
  r"""Activation-based attention transfer.

  .. math::
    a = \frac{Q}{\|Q\|_2},\quad
    Q = \operatorname{vec}\Big(\tfrac{1}{C}\sum_c |f_{\cdot\cdot c}|^p\Big)
        \in \mathbb{R}^{HW}, \qquad
    \ell = \frac{1}{B\,HW} \sum_b \|a_{s,b} - a_{t,b}\|_2^2

  i.e. the mean of (a_s − a_t)² over the batch and the H·W spatial positions (the
  reduction of the authors' code). Channel counts may differ; H and W must match.

  Args:
    student_features: NHWC ``[B, H, W, C_s]``.
    teacher_features: NHWC ``[B, H, W, C_t]``.
    p: exponent of the activation magnitude (2 in the paper).
    mask: optional boolean ``[B]``.

  Returns:
    float32 scalar.

  References:
    Zagoruyko & Komodakis, *Paying More Attention to Attention*, ICLR 2017.

  Example:
    >>> f = jnp.ones((2, 4, 4, 8))
    >>> float(attention_transfer_loss(f, jnp.ones((2, 4, 4, 16))))  # same maps, any width
    0.0
  """
  s, t = _f32(student_features), _f32(teacher_features)
  if s.ndim != 4 or t.ndim != 4 or s.shape[:3] != t.shape[:3]:
    raise ValueError("attention_transfer_loss needs NHWC maps with equal B, H, W; "
                     f"got student {s.shape} and teacher {t.shape}")
  diff = _attention_map(s, p) - _attention_map(t, p)
  return _masked_mean(jnp.mean(jnp.square(diff), axis=-1), mask)


def _flatten_rows(student: ArrayLike, teacher: ArrayLike) -> tuple[Array, Array]:
  """[B, ...] pair -> [B, D_s], [B, D_t]; the widths may differ, B may not."""
  s, t = _f32(student), _f32(teacher)
  if s.shape[:1] != t.shape[:1]:
    raise ValueError(f"student and teacher batches differ: {s.shape} vs {t.shape}")
  return s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)


def _row_mask(mask: ArrayLike | None, batch: int) -> Array:
  if mask is None:
    return jnp.ones((batch,), bool)
  mask = jnp.asarray(mask).astype(bool)
  if mask.shape != (batch,):
    raise ValueError(f"mask must have shape ({batch},), got {mask.shape}")
  return mask


def _weighted_mean(values: Array, weights: Array) -> Array:
  total = jnp.sum(jnp.where(weights, values, 0.0))
  return total / jnp.maximum(jnp.sum(weights), 1).astype(jnp.float32)


def _rkd_potentials(x: Array, pair: Array, eps: float = 1e-12):
  """Mean-normalised distances [B, B] and angle cosines [B, B, B] (vertex first)."""
  diff = x[None, :, :] - x[:, None, :]  # diff[i, j] = x_j - x_i
  dist = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(diff), axis=-1), eps))
  mean_dist = _weighted_mean(dist, pair)
  dist = dist / jnp.maximum(mean_dist, eps)
  unit = _l2_normalize(diff)
  cosines = jnp.einsum("ijd,ikd->ijk", unit, unit)
  return dist, cosines


def rkd_loss(student_embeddings: ArrayLike, teacher_embeddings: ArrayLike,
             distance_weight: float = 25.0, angle_weight: float = 50.0, *,
             mask: ArrayLike | None = None) -> Array:
  r"""Relational knowledge distillation: distance- and angle-wise potentials.

  .. math::
    \psi_D(i,j) = \frac{\|x_i - x_j\|_2}{\mu},\ \
    \mu = \operatorname{mean}_{i \ne j} \|x_i - x_j\|_2, \qquad
    \psi_A(i,j,k) = \langle e_{ij}, e_{ik} \rangle,\
    e_{ij} = \frac{x_j - x_i}{\|x_j - x_i\|} \\
    \ell = w_D \operatorname{mean}_{i \ne j} h(\psi_D^s - \psi_D^t)
         + w_A \operatorname{mean}_{i,j,k\ \mathrm{distinct}} h(\psi_A^s - \psi_A^t)

  with h the smooth-L1 (Huber, δ = 1) loss. The means run over the paper's sets of
  distinct pairs and triplets of (unmasked) rows; the authors' code averages over
  all B² / B³ entries instead, whose degenerate ones add zeros, which scales the
  terms by (B−1)/B and (B−1)(B−2)/B². Embedding widths may differ. Memory is
  O(B²·D + B³) for the angle term, fine for the usual B ≤ 256.

  Args:
    student_embeddings: ``[B, D_s]`` (trailing axes are flattened).
    teacher_embeddings: ``[B, D_t]``.
    distance_weight: w_D. angle_weight: w_A.
    mask: optional boolean ``[B]``, the rows that take part.

  Returns:
    float32 scalar; 0 with fewer than 2 (distance) / 3 (angle) rows.

  References:
    Park, Kim, Lu & Cho, *Relational Knowledge Distillation*, CVPR 2019.

  Example:
    >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> abs(float(rkd_loss(x, 3.0 * x))) < 1e-6  # both potentials are scale invariant
    True
  """
  s, t = _flatten_rows(student_embeddings, teacher_embeddings)
  batch = s.shape[0]
  rows = _row_mask(mask, batch)
  eye = jnp.eye(batch, dtype=bool)
  pair = rows[:, None] & rows[None, :] & ~eye
  triplet = pair[:, :, None] & pair[:, None, :] & ~eye[None, :, :]
  dist_s, cos_s = _rkd_potentials(s, pair)
  dist_t, cos_t = _rkd_potentials(t, pair)
  distance = _weighted_mean(optax.huber_loss(dist_s, dist_t, delta=1.0), pair)
  angle = _weighted_mean(optax.huber_loss(cos_s, cos_t, delta=1.0), triplet)
  return distance_weight * distance + angle_weight * angle


def _normalized_gram(x: Array, rows: Array) -> Array:
  """Row-L2-normalised Gram matrix of the unmasked rows (masked rows and cols 0)."""
  x = jnp.where(rows[:, None], x, 0.0)
  return _l2_normalize(x @ x.T)


def similarity_preserving_loss(student_features: ArrayLike,
                               teacher_features: ArrayLike, *,
                               mask: ArrayLike | None = None) -> Array:
  r"""Similarity-preserving KD: match the batch's pairwise-similarity structure.

  .. math::
    \tilde G = \mathrm{rownorm}(Q Q^\top),\ Q \in \mathbb{R}^{B \times D}, \qquad
    \ell = \frac{1}{B^2}\,\|\tilde G_s - \tilde G_t\|_F^2

  Q is the flattened feature batch; each Gram row is divided by its L2 norm. With
  a mask, B is the number of unmasked rows and the Gram matrices span only them.

  Args:
    student_features: ``[B, ...]`` (flattened to ``[B, D_s]``).
    teacher_features: ``[B, ...]`` (flattened to ``[B, D_t]``).
    mask: optional boolean ``[B]``.

  Returns:
    float32 scalar.

  References:
    Tung & Mori, *Similarity-Preserving Knowledge Distillation*, ICCV 2019.

  Example:
    >>> x = jnp.eye(3)
    >>> float(similarity_preserving_loss(x, 2.0 * x))
    0.0
  """
  s, t = _flatten_rows(student_features, teacher_features)
  rows = _row_mask(mask, s.shape[0])
  sq = jnp.sum(jnp.square(_normalized_gram(s, rows) - _normalized_gram(t, rows)))
  count = jnp.maximum(jnp.sum(rows), 1).astype(jnp.float32)
  return sq / jnp.square(count)


def _conditional_probs(x: Array, pair: Array) -> Array:
  """P[i, j] ∝ (cos(x_i, x_j) + 1)/2 over the valid j of each row."""
  unit = _l2_normalize(x)
  kernel = jnp.where(pair, (unit @ unit.T + 1.0) / 2.0, 0.0)
  row_sum = jnp.sum(kernel, axis=-1, keepdims=True)
  return kernel / jnp.where(row_sum > 0, row_sum, 1.0)


def pkt_loss(student_features: ArrayLike, teacher_features: ArrayLike, *,
             eps: float = 1e-7, mask: ArrayLike | None = None) -> Array:
  r"""Probabilistic knowledge transfer: match conditional similarity distributions.

  .. math::
    p_{j|i} = \frac{K_t(i,j)}{\sum_k K_t(i,k)},\
    K(i,j) = \tfrac{1}{2}(\cos(x_i, x_j) + 1) \in [0, 1], \qquad
    \ell = \frac{1}{B^2} \sum_{i,j}
        p_{j|i} \log\frac{p_{j|i} + \epsilon}{q_{j|i} + \epsilon}

  (q from the student), i.e. KL(teacher‖student) averaged over the B×B entries;
  the sums include j = i and ε = 1e-7, as in the authors' implementation. With a
  mask, only unmasked rows take part (B is their number). Widths may differ.

  Args:
    student_features: ``[B, ...]`` (flattened to ``[B, D_s]``).
    teacher_features: ``[B, ...]`` (flattened to ``[B, D_t]``).
    eps: smoothing inside the log (keeps zero-similarity entries finite).
    mask: optional boolean ``[B]``.

  Returns:
    float32 scalar.

  References:
    Passalis & Tefas, *Learning Deep Representations with Probabilistic Knowledge
    Transfer*, ECCV 2018.

  Example:
    >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> abs(float(pkt_loss(x, 5.0 * x))) < 1e-6  # cosines are scale invariant
    True
  """
  s, t = _flatten_rows(student_features, teacher_features)
  rows = _row_mask(mask, s.shape[0])
  pair = rows[:, None] & rows[None, :]
  p = _conditional_probs(t, pair)
  q = _conditional_probs(s, pair)
  return _weighted_mean(p * jnp.log((p + eps) / (q + eps)), pair)


def hidden_state_loss(student_hidden: ArrayLike, teacher_hidden: ArrayLike, *,
                      mask: ArrayLike | None = None, distance: str = "cosine") -> Array:
  r"""DistilBERT's hidden-state loss: a per-token distance, averaged over the real tokens.

  .. math:: \ell = \frac{1}{|M|} \sum_{(b, t) \in M} d(h^s_{b,t}, h^t_{b,t})

  with ``d`` the ``cosine`` distance 1 − cos (Sanh et al. 2019 use it on the last
  hidden states) or the ``mse`` (mean squared difference over the width).

  Args:
    student_hidden, teacher_hidden: ``[B, T, D]`` (equal widths).
    mask: optional boolean ``[B, T]``: the real tokens (or ``[B]``: whole rows).
    distance: ``"cosine"`` or ``"mse"``.

  Returns:
    float32 scalar.

  Example:
    >>> float(hidden_state_loss(jnp.ones((1, 2, 3)), -jnp.ones((1, 2, 3))))
    2.0
  """
  if distance not in ("cosine", "mse"):
    raise ValueError(f"hidden_state_loss: distance must be 'cosine' or 'mse', got {distance!r}")
  s, t = _f32(student_hidden), _f32(teacher_hidden)
  if s.shape != t.shape:
    raise ValueError(f"hidden_state_loss needs equal shapes; got student {s.shape} and "
                     f"teacher {t.shape}")
  return _masked_mean(divergences.get(distance)(s, t), mask)
