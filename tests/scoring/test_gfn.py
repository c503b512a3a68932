"""The RGFN objective and BiN selection (vcot/scoring/gfn.py): exact properties, and the proof that the loss is right.

The convergence test trains a toy tabular policy over every rationale of at most 3 tokens from a 2-token
alphabet (15 rationales) with :func:`vcot.scoring.gfn.subtb_loss` on its own samples, then computes the policy's exact
sampling distribution: it must match R(Z)/ΣR within 0.001 per rationale (it reaches ~1e-8; dropping
the end-of-turn terms from δ leaves it 0.2 off).
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from vcot.scoring import gfn

torch.set_num_threads(1)


def test_interpolation_is_exact_on_a_linear_reward() -> None:
    length, every = 23, 8
    anchors = gfn.reward_anchors(length, every)
    assert anchors == [0, 8, 16, 23]

    def line(k: int) -> float:
        return -3.0 + 0.25 * k

    rewards = gfn.interpolate_log_rewards(anchors, [line(k) for k in anchors], length)
    assert rewards.tolist() == pytest.approx([line(k) for k in range(length + 1)])


def test_interpolation_reaches_the_terminal_reward_and_penalizes_short_states() -> None:
    anchors = gfn.reward_anchors(10, 4, min_length=3)
    assert anchors == [0, 3, 4, 8, 10]
    rewards = gfn.interpolate_log_rewards(anchors, [-1.0, -2.0, -3.0, -5.0, -9.0], 10, min_length=3)
    assert rewards[0] == -1.0  # the empty state: log π(Y | X)
    assert rewards[1:3].tolist() == [gfn.MIN_LENGTH_LOG_REWARD] * 2
    assert rewards[9] == pytest.approx(-7.0)  # between the last anchor and the end, not 0
    assert rewards[10] == -9.0
    short = gfn.interpolate_log_rewards([0, 2], [-1.0, -4.0], 2, min_length=5)
    assert short.tolist() == [-1.0, gfn.MIN_LENGTH_LOG_REWARD, -4.0]  # a short reference keeps its own reward


def random_batch(lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    log_pf = -torch.rand(batch, width, generator=g, dtype=torch.float64)
    log_pt = -torch.rand(batch, width + 1, generator=g, dtype=torch.float64)
    log_r = -5 * torch.rand(batch, width + 1, generator=g, dtype=torch.float64)
    return log_pf, log_pt, log_r, torch.tensor(lengths)


def test_deltas_telescope_over_a_full_trajectory() -> None:
    log_pf, log_pt, log_r, lengths = random_batch([7, 4], width=7)
    deltas = gfn.balance_deltas(log_pf, log_pt, log_r, lengths)
    for row, n in enumerate(lengths.tolist()):
        expected = (log_r[row, 0] - log_pt[row, 0]) + log_pf[row, :n].sum() - (log_r[row, n] - log_pt[row, n])
        assert deltas[row].sum().item() == pytest.approx(expected.item())


def test_nothing_after_the_end_token_contributes() -> None:
    log_pf, log_pt, log_r, lengths = random_batch([3, 5], width=6)
    loss = gfn.subtb_loss(log_pf, log_pt, log_r, lengths, lambda_sub=0.9)
    garbage = [t.clone() for t in (log_pf, log_pt, log_r)]
    for tensor in garbage:
        tensor[0, 4:] = 123.0  # row 0 ends at state 3: token 3 and states 4.. are past its end
        tensor[1, 6:] = -77.0
    assert gfn.subtb_loss(*garbage, lengths, lambda_sub=0.9).item() == pytest.approx(loss.item())
    changed = [t.clone() for t in (log_pf, log_pt, log_r)]
    changed[0][0, 2] += 1.0  # the last real token of row 0 does count
    assert gfn.subtb_loss(*changed, lengths, lambda_sub=0.9).item() != pytest.approx(loss.item())


def test_loss_is_the_weighted_mean_over_sub_ranges() -> None:
    log_pf, log_pt, log_r, lengths = random_batch([3, 2], width=3, seed=1)
    deltas = gfn.balance_deltas(log_pf, log_pt, log_r, lengths)
    lam, total, weight = 0.5, 0.0, 0.0
    for row, n in enumerate(lengths.tolist()):
        for i, j in itertools.combinations(range(n + 1), 2):
            total += lam ** (j - i - 1) * deltas[row, i:j].sum().item() ** 2
            weight += lam ** (j - i - 1)
    assert gfn.subtb_loss(log_pf, log_pt, log_r, lengths, lambda_sub=lam).item() == pytest.approx(total / weight)


def test_filter_always_keeps_the_reference() -> None:
    rewards = torch.tensor([-2.0, -2.5, -3.5, -1.0])
    assert gfn.reference_filter(rewards, 0, tolerance=1.5).tolist() == [True, True, False, True]
    assert gfn.reference_filter(rewards, 0, tolerance=1.0).tolist() == [True, False, False, True]
    strict = torch.tensor([-2.0, -1.5, -1.0])  # δ < 1: the bar (-1.0) is above the reference itself
    assert gfn.reference_filter(strict, 0, tolerance=0.5).tolist() == [True, False, True]


def test_schedules_anneal_linearly_and_stop() -> None:
    assert gfn.linear_schedule(0, 1.5, 1.0, 100) == 1.5
    assert gfn.linear_schedule(50, 1.5, 1.0, 100) == pytest.approx(1.25)
    assert gfn.linear_schedule(500, 1.0, 0.7, 100) == 0.7
    assert gfn.linear_schedule(3, 1.0, 0.7, 0) == 0.7
    temps = [gfn.sampling_temperature(random.Random(seed)) for seed in range(400)]
    assert all(0.5 <= t <= 1.0 for t in temps) and 0.15 < sum(t < 1.0 for t in temps) / 400 < 0.35


def test_length_normalized_reward_reads_the_terminal_state() -> None:
    log_r = torch.tensor([[-1.0, -2.0, -6.0, 0.0], [-1.0, -8.0, -1.0, -1.0]])
    assert gfn.length_normalized(log_r, torch.tensor([2, 1])).tolist() == [-3.0, -8.0]


def test_bin_returns_the_row_mean_argmax() -> None:
    scores = torch.tensor(
        [
            [-0.1, -3.0, -3.0],  # best single score, poor across rationales
            [-0.9, -0.8, -1.0],  # best on average: BiN's answer
            [-2.0, -0.5, -2.0],
        ]
    )
    assert gfn.bin_select(scores) == 1
    assert gfn.best_of_n(torch.tensor([-0.3, -0.2, -0.9])) == 1
    with pytest.raises(ValueError):
        gfn.bin_select(torch.empty(0, 3))


def test_bin_shows_the_rationale_whose_boxes_the_samples_agree_on() -> None:
    scores = torch.tensor(
        [
            [-0.9, -0.4, -0.1, -0.6],  # answer 0 ("red") after each rationale
            [-0.9, -0.4, -0.1, -0.6],
            [-2.0, -2.0, -0.2, -2.0],  # "blue"
            [-0.9, -0.4, -0.1, -0.6],
        ]
    )
    answers = ["red", "red ", "blue", "red"]
    near, near_too, far = [(0, 0, 100, 100)], [(0, 0, 100, 110)], [(500, 500, 600, 600)]
    # of the rationales the SFT model answered "red" (0, 1, 3), one whose box the others repeat (0 and 3 agree with
    # each other and with the "blue" rationale 2 alike; 3 explains "red" better), not the likeliest (1)
    assert gfn.bin_rationale(scores, answers, 0, [near, far, near_too, near]) == 3
    # the same boxes summed in another order still tie, and the tie goes to the likelier (1), not the first found
    shifted, lower = [(1, 0, 101, 100)], [(0, 15, 100, 115)]
    assert gfn.bin_rationale(scores, answers, 0, [shifted, near, lower, near]) == 1
    # no boxes anywhere (or none agreeing): the one that explains the answer best
    assert gfn.bin_rationale(scores, answers, 0, [[], [], [], []]) == 1
    assert gfn.bin_rationale(scores, answers, 3, [near, far, [], far]) == 1  # 1 and 3 agree alike: the likelier
    assert gfn.bin_rationale(scores, answers, 2, [near, far, far, near]) == 2  # the only "blue" one
    with pytest.raises(ValueError):
        gfn.bin_rationale(scores, answers[:3], 0, [near] * 3)
    with pytest.raises(ValueError):
        gfn.bin_rationale(scores, answers, 0, [near] * 3)


def test_box_agreement_pairs_boxes_in_order_and_counts_a_missing_one_as_zero() -> None:
    a, b = (0, 0, 10, 10), (100, 100, 110, 110)
    assert gfn.box_agreement([a, b], [a, b]) == pytest.approx(1.0)
    assert gfn.box_agreement([a, b], [b, a]) == pytest.approx(0.0)  # the same boxes named in another order
    assert gfn.box_agreement([a], [a, b]) == pytest.approx(0.5)
    assert gfn.box_agreement([a], []) == 0.0 and gfn.box_agreement([], []) == 0.0


# --- convergence: the objective samples in proportion to the reward --------------------------------------
ALPHABET, MAX_LEN = 2, 3
RATIONALES = [z for n in range(MAX_LEN + 1) for z in itertools.product(range(ALPHABET), repeat=n)]
INDEX = {z: i for i, z in enumerate(RATIONALES)}
END = ALPHABET  # the end-of-turn action


class TabularPolicy(torch.nn.Module):
    """One row of logits (two tokens, end-of-turn) per state; a full-length state can only end."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(len(RATIONALES), ALPHABET + 1, dtype=torch.float64))

    def log_probs(self, state: tuple[int, ...]) -> torch.Tensor:
        if len(state) == MAX_LEN:
            return torch.tensor([-torch.inf] * ALPHABET + [0.0], dtype=torch.float64)
        return self.logits[INDEX[state]].log_softmax(-1)

    def exact_distribution(self) -> torch.Tensor:
        with torch.no_grad():
            probs = []
            for z in RATIONALES:
                logp = sum(self.log_probs(z[:t])[z[t]] for t in range(len(z))) + self.log_probs(z)[END]
                probs.append(torch.as_tensor(logp).exp())
            return torch.stack(probs)


def sample(policy: TabularPolicy, rng: torch.Generator) -> tuple[int, ...]:
    state: tuple[int, ...] = ()
    while True:
        with torch.no_grad():
            action = int(torch.multinomial(policy.log_probs(state).exp(), 1, generator=rng))
        if action == END:
            return state
        state = state + (action,)


def trajectory_tensors(policy: TabularPolicy, batch: list[tuple[int, ...]], log_reward: torch.Tensor) -> tuple:
    """log PF, log PT, log R and lengths for a batch, padded to MAX_LEN, as the train stage builds them."""
    log_pf = torch.zeros(len(batch), MAX_LEN, dtype=torch.float64)
    log_pt = torch.zeros(len(batch), MAX_LEN + 1, dtype=torch.float64)
    log_r = torch.zeros(len(batch), MAX_LEN + 1, dtype=torch.float64)
    rows_pf, rows_pt = [], []
    for row, z in enumerate(batch):
        states = [z[:t] for t in range(len(z) + 1)]
        dists = [policy.log_probs(s) for s in states]
        rows_pf.append(torch.stack([dists[t][z[t]] for t in range(len(z))] + [torch.zeros((), dtype=torch.float64)] * (MAX_LEN - len(z))))
        rows_pt.append(torch.stack([d[END] for d in dists] + [torch.zeros((), dtype=torch.float64)] * (MAX_LEN - len(z))))
        log_r[row, : len(z) + 1] = torch.stack([log_reward[INDEX[s]] for s in states])
    log_pf, log_pt = torch.stack(rows_pf), torch.stack(rows_pt)
    return log_pf, log_pt, log_r, torch.tensor([len(z) for z in batch])


def test_trained_policy_samples_in_proportion_to_the_reward() -> None:
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    log_reward = torch.empty(len(RATIONALES), dtype=torch.float64).uniform_(-2.0, 1.0, generator=rng)
    target = log_reward.exp() / log_reward.exp().sum()
    policy = TabularPolicy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.05)
    for _ in range(400):
        batch = [sample(policy, rng) for _ in range(16)]
        loss = gfn.subtb_loss(*trajectory_tensors(policy, batch, log_reward), lambda_sub=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learned = policy.exact_distribution()
    assert learned.sum().item() == pytest.approx(1.0)
    assert (learned - target).abs().max().item() < 1e-3, (learned, target)
    untrained = TabularPolicy().exact_distribution()
    assert (untrained - target).abs().max().item() > 0.05  # the target is not what the policy starts with
