"""LaCoT's GFlowNet objective (RGFN) and Bayesian inference over N rationales (BiN), as pure tensor functions.

A rationale Z = z_0 .. z_{n-1} is built token by token; state s_k is the prefix z_<k (s_0 empty, s_n the
whole rationale). Every state can end the rationale (the end-of-turn token), so the policy q_θ samples Z with
probability Π_t PF(z_t | s_t) · PT(s_n). The objective makes that probability proportional to the reward
R(s_n) = π(Z, end-of-turn, Y | X)^(1/T) of the frozen SFT model: the modified sub-trajectory balance of
Hu et al. (2024) with P_B = 1 (each state has one parent), where a state's flow is F(s) = R(s) / PT(s).

Shapes, for a batch of B trajectories padded to N tokens: ``log_pf`` [B, N] (the log-probability of each
sampled token, untempered), ``log_pt`` and ``log_r`` [B, N + 1] (the end-of-turn log-probability and the log
reward at every state), ``lengths`` [B] (n per row). Everything past a row's length is ignored.

No model here: the train stage (``vcot/train/rgfn.py``) computes these tensors, evaluate uses :func:`bin_select`,
:func:`bin_rationale` and :func:`best_of_n`. Keeping them pure makes the objective testable exactly and in seconds.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import torch

from vcot.grounding.answers import normalize_answer
from vcot.grounding.boxes import iou

MIN_LENGTH_LOG_REWARD = -99.0
"""log R of a state shorter than ``rat_min_len`` (but not empty): the released code's large negative constant."""


def linear_schedule(step: int, start: float, end: float, horizon: int) -> float:
    """``start`` at step 0, ``end`` from ``horizon`` on, linear in between (T_s and δ_s anneal this way)."""
    if horizon <= 0 or step >= horizon:
        return end
    return start + (end - start) * max(step, 0) / horizon


def sampling_temperature(rng: random.Random) -> float:
    """LaCoT's exploration temperature: 1, or with probability 1/4 uniform in [0.5, 1]."""
    return rng.uniform(0.5, 1.0) if rng.random() < 0.25 else 1.0


def reward_anchors(length: int, every: int, min_length: int = 0) -> list[int]:
    """The states whose reward is computed exactly: the empty one, multiples of ``every`` from
    ``min_length`` on, ``min_length`` itself, and the terminal one. The rest are interpolated.

    >>> reward_anchors(20, 8, min_length=5)
    [0, 5, 8, 16, 20]
    """
    if every < 1:
        raise ValueError("reward_every must be >= 1")
    anchors = {0, length} | {k for k in range(every, length, every) if k >= min_length}
    if 0 < min_length < length:
        anchors.add(min_length)
    return sorted(anchors)


def interpolate_log_rewards(anchors: list[int], values: list[float], length: int, min_length: int = 0) -> torch.Tensor:
    """log R at every state 0..``length`` from its exact values at ``anchors`` (which hold 0 and ``length``):
    linear in between, so every state up to the terminal one has a reward (the released code left the
    states after the last anchor at 0). Non-empty states shorter than ``min_length`` get
    :data:`MIN_LENGTH_LOG_REWARD`, except the terminal one.

    >>> interpolate_log_rewards([0, 4], [-8.0, -4.0], 4).tolist()
    [-8.0, -7.0, -6.0, -5.0, -4.0]
    >>> interpolate_log_rewards([0], [-7.5], 0).tolist()  # an empty rationale: its one state's own reward
    [-7.5]
    """
    if not anchors or anchors[0] != 0 or anchors[-1] != length or len(values) != len(anchors):
        raise ValueError("anchors must start at 0, end at length and match values one to one")
    states = torch.arange(length + 1, dtype=torch.float64)
    out = torch.full((length + 1,), float(values[0]), dtype=torch.float64)  # length 0: no span below sets it
    for (left, right), (v_left, v_right) in zip(itertools.pairwise(anchors), itertools.pairwise(values), strict=True):
        span = states[left : right + 1]
        out[left : right + 1] = v_left + (v_right - v_left) * (span - left) / (right - left)
    out[1 : min(min_length, length)] = MIN_LENGTH_LOG_REWARD  # the terminal state keeps its own (a short reference)
    return out


def subtb_loss(
    log_pf: torch.Tensor,
    log_pt: torch.Tensor,
    log_r: torch.Tensor,
    lengths: torch.Tensor,
    lambda_sub: float = 1.0,
) -> torch.Tensor:
    """Modified sub-trajectory balance, P_B = 1: the λ_sub^(j-i-1)-weighted mean, over every trajectory's
    sub-ranges [i, j) with 0 <= i < j <= n, of (Σ_{t=i}^{j-1} δ_t)², where
    δ_t = log R_t − log PT_t + log PF_t − (log R_{t+1} − log PT_{t+1}). Positions past n never count.
    """
    deltas = balance_deltas(log_pf, log_pt, log_r, lengths)
    zero = torch.zeros_like(deltas[:, :1])
    cumulative = torch.cat([zero, deltas.cumsum(dim=1)], dim=1)  # [B, N + 1]: Σδ over [0, k)
    sums = cumulative.unsqueeze(1) - cumulative.unsqueeze(2)  # [B, i, j]: Σδ over [i, j)
    positions = torch.arange(cumulative.shape[1], device=deltas.device)
    i, j = positions.view(-1, 1), positions.view(1, -1)
    valid = (i < j).unsqueeze(0) & (j.unsqueeze(0) <= lengths.view(-1, 1, 1))
    weights = torch.where(valid, float(lambda_sub) ** (j - i - 1).clamp(min=0).to(deltas.dtype), 0.0)
    total = weights.sum()
    if total == 0:
        return (deltas * 0).sum()
    return (weights * torch.where(valid, sums, 0.0).square()).sum() / total


def balance_deltas(
    log_pf: torch.Tensor, log_pt: torch.Tensor, log_r: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """δ_t for t < n, zero past each row's length (so padding and anything after the end token add nothing)."""
    flow = log_r - log_pt  # log F(s_t) up to the normalizing constant
    deltas = flow[:, :-1] + log_pf - flow[:, 1:]
    steps = torch.arange(deltas.shape[1], device=deltas.device).view(1, -1)
    return torch.where(steps < lengths.view(-1, 1), deltas, 0.0)


def length_normalized(log_r: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """r_j: each trajectory's terminal log reward divided by its length (at least 1), what the filter compares."""
    terminal = log_r.gather(1, lengths.view(-1, 1)).squeeze(1)
    return terminal / lengths.clamp(min=1).to(terminal.dtype)


def reference_filter(rewards: torch.Tensor, reference: int, tolerance: float) -> torch.Tensor:
    """Which trajectories to train on: r_j >= δ_s · r_ref, and the reference always. Rewards are
    log-likelihoods (<= 0), so δ_s = 1.5 lets a sample be half again worse than the reference, 1.0 none."""
    keep = rewards >= tolerance * rewards[reference]
    keep[reference] = True
    return keep


def bin_select(scores: torch.Tensor) -> int:
    """BiN's answer: the row of S[j, i] = length-normalized log p(Z_i, Y_j | X) (answer j, rationale i) with
    the highest mean, i.e. the answer most likely across all sampled rationales."""
    if scores.ndim != 2 or scores.numel() == 0:
        raise ValueError("scores must be a non-empty [answers, rationales] matrix")
    return int(scores.mean(dim=1).argmax())


def box_agreement(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """How far two rationales' boxes agree: the IoU of their boxes paired in the order written, summed and divided
    by the longer list's length (a box the other lacks counts 0); 0 when either has none.

    >>> round(box_agreement([(0, 0, 10, 10), (50, 50, 60, 60)], [(0, 0, 10, 20)]), 4)
    0.25
    >>> box_agreement([], [(0, 0, 10, 10)])
    0.0
    """
    if not a or not b:
        return 0.0
    return sum(iou(x, y) for x, y in zip(a, b)) / max(len(a), len(b))


def bin_rationale(
    scores: torch.Tensor, answers: Sequence[str], chosen: int, boxes: Sequence[Sequence[Sequence[float]]]
) -> int:
    """The rationale BiN shows with its answer ``chosen`` (a row of ``scores``): of the rationales after which the
    SFT model gave that answer (the same answer as scoring counts it: :func:`normalize_answer`), the one whose
    ``boxes`` agree best with every other sample's (the highest summed :func:`box_agreement`), ties to the one
    that explains the answer best (the highest S[chosen, i]).

    The samples are draws from the policy's posterior over rationales, so the box they agree on is the choice of
    least expected IoU loss (minimum Bayes risk), where any single sample, the likeliest included, lands wherever
    its digits fell.

    >>> scores = torch.tensor([[-1.0, -0.5, -0.2], [-1.0, -0.5, -0.2], [-0.9, -0.6, -0.1]])
    >>> near, far = [(0, 0, 10, 10)], [(80, 80, 90, 90)]
    >>> bin_rationale(scores, ["red", "red", "blue"], 0, [near, far, near])  # rationale 0 agrees with rationale 2
    0
    >>> bin_rationale(scores, ["Red.", "blue", "red"], 0, [[], [], []])  # no boxes: the likeliest; "Red." is "red"
    2
    """
    if scores.ndim != 2 or not scores.shape[1] == len(answers) == len(boxes) or not 0 <= chosen < scores.shape[0]:
        raise ValueError("scores must be [answers, rationales] with one answer and one box list per rationale, and "
                         "chosen a row of it")  # fmt: skip
    same = [i for i, answer in enumerate(answers) if normalize_answer(answer) == normalize_answer(answers[chosen])]

    def consensus(i: int) -> float:
        # fsum: rationales with the same boxes get the same sum whatever their order, so a tie stays a tie
        return math.fsum(box_agreement(boxes[i], other) for j, other in enumerate(boxes) if j != i)

    return max(same, key=lambda i: (consensus(i), float(scores[chosen, i])))


def best_of_n(answer_log_probs: torch.Tensor) -> int:
    """The best-of-N baseline: the sample whose answer has the highest mean token log-probability."""
    if answer_log_probs.ndim != 1 or answer_log_probs.numel() == 0:
        raise ValueError("answer_log_probs must be a non-empty vector")
    return int(answer_log_probs.argmax())
