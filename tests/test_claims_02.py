"""Notebook 02's claims, recomputed from torch and the helpers (independent of stored outputs)."""

import math

import pytest
import torch

from utils.data import make_regression
from utils.device import get_device
from utils.surface import least_squares_minimum, mse_surface

device = get_device()
SGD, Adam = torch.optim.SGD, torch.optim.Adam
LR, NUM_STEPS, BATCH = 0.05, 600, 4


def dataset(dtype=torch.float64, noise=0.1):
    return make_regression(num_samples=32, num_features=1, seed=0, noise=noise, device=device, dtype=dtype)


def problem(dtype=torch.float64):
    data = dataset(dtype)
    return data.X, data.y


def make_model(dtype=torch.float64):
    model = torch.nn.Linear(1, 1, dtype=dtype)
    with torch.no_grad():
        model.weight.fill_(-1.0)
        model.bias.fill_(2.0)
    return model.to(device)


def minibatches(train_batch_size, num_steps, num_samples=32, seed=0):
    """The notebook's minibatches(): a new shuffle every epoch, from a seeded CPU generator."""
    if train_batch_size is None:
        return [slice(None)] * num_steps
    gen = torch.Generator().manual_seed(seed)
    epochs = -(-num_steps * train_batch_size // num_samples)
    order = torch.cat([torch.randperm(num_samples, generator=gen) for _ in range(epochs)])
    return order[: num_steps * train_batch_size].view(num_steps, -1).to(device)


def train(optimizer_class, lr, num_steps, zero_grad=True, train_batch_size=None, dtype=torch.float64,
          data=None, seed=0, **options):
    """The notebook's train(): losses, .grad norms and the (w, b) path, start included."""
    data = dataset(dtype) if data is None else data
    model = make_model(dtype)
    optimizer = optimizer_class(model.parameters(), lr=lr, **options)
    losses, norms, path = [], [], [(model.weight.item(), model.bias.item())]
    for batch in minibatches(train_batch_size, num_steps, seed=seed):
        if zero_grad:
            optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(data.X[batch]), data.y[batch])
        loss.backward()
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())
        optimizer.step()
        losses.append(loss.item())
        path.append((model.weight.item(), model.bias.item()))
    return losses, norms, path


def peaks_per_100(losses):
    return [max(losses[i : i + 100]) for i in range(0, len(losses), 100)]


def swing_peaks(losses):
    """The notebook's 'highest loss of each swing': points above both neighbours."""
    return [round(b, 1) for a, b, c in zip(losses, losses[1:], losses[2:]) if a < b > c]


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def lowest_loss():
    X, y = problem()
    w, b = least_squares_minimum(X, y)
    return torch.nn.functional.mse_loss(X * w + b, y).item()


@pytest.fixture(scope="module")
def runs():
    """The notebook's runs, computed once."""
    return {
        "correct": train(SGD, LR, NUM_STEPS, train_batch_size=BATCH),
        "forgot": train(SGD, LR, NUM_STEPS, zero_grad=False, train_batch_size=BATCH),
        "full_correct": train(SGD, LR, NUM_STEPS),
        "full_forgot": train(SGD, LR, NUM_STEPS, zero_grad=False),
    }


# ---- section 1: minibatches, the main symptom ------------------------------------------------------------------
def test_section1_on_minibatches_forgetting_zero_grad_diverges_and_the_correct_loop_settles(runs):
    """The old notebook showed only bounded swings; on minibatches the loss grows without bound."""
    correct, forgot = runs["correct"][0], runs["forgot"][0]
    peaks = peaks_per_100(forgot)
    assert all(b > a for a, b in zip(peaks, peaks[1:]))  # "every hundred steps, higher than the last"
    assert peaks[-1] > 1e4 * peaks[0]
    assert max(correct[500:]) < 3 * max(lowest_loss(), 0.01)  # falls to the noise and stays there
    printed = [f"{v:.3g}" for v in (max(correct[:100]), max(correct[500:]), max(forgot[:100]), max(forgot[500:]))]
    assert printed == ["14.2", "0.0255", "23.5", "1.28e+06"]


@pytest.mark.parametrize("seed", range(8))
def test_section1_the_divergence_is_not_one_lucky_shuffle(seed):
    peaks = peaks_per_100(train(SGD, LR, NUM_STEPS, zero_grad=False, train_batch_size=BATCH, seed=seed)[0])
    assert peaks[-1] > 50 * peaks[0]
    correct = train(SGD, LR, NUM_STEPS, train_batch_size=BATCH, seed=seed)[0]
    assert max(correct[500:]) < 0.1


def test_section1_float32_tells_the_same_story():
    forgot32 = train(SGD, LR, NUM_STEPS, zero_grad=False, train_batch_size=BATCH, dtype=torch.float32)
    peaks = peaks_per_100(forgot32[0])
    assert all(b > a for a, b in zip(peaks, peaks[1:])) and peaks[-1] > 1e4 * peaks[0]
    momentum32 = train(SGD, LR, NUM_STEPS, train_batch_size=BATCH, dtype=torch.float32, momentum=1.0)
    assert forgot32[0] == momentum32[0] and forgot32[2] == momentum32[2]


# ---- section 2: the diagnostic ---------------------------------------------------------------------------------
def test_section2_the_grad_norm_falls_with_zero_grad_and_grows_without(runs):
    correct, forgot = runs["correct"][1], runs["forgot"][1]
    assert max(correct[500:]) < correct[0] / 10  # shrinks as the model fits, then hovers
    assert max(correct[100:]) < 0.5
    peaks = peaks_per_100(forgot)
    assert all(b > a for a, b in zip(peaks, peaks[1:])) and peaks[-1] > 1000
    assert (f"{max(correct[500:]):.3g}", f"{max(forgot[500:]):.3g}") == ("0.323", "5.34e+03")


def test_section2_the_norm_is_the_norm_of_all_gradients_as_one_vector():
    model = make_model()
    X, y = problem()
    torch.nn.functional.mse_loss(model(X), y).backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    torch.testing.assert_close(norm, flat(p.grad for p in model.parameters()).norm())


# ---- section 3: what the optimizer applies ---------------------------------------------------------------------
def test_section3_grad_is_exactly_the_running_sum_on_minibatches_and_sgd_moves_lr_times_it():
    X, y = problem()
    model = make_model()
    optimizer = SGD(model.parameters(), lr=LR)
    params = list(model.parameters())
    running_sum = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in minibatches(BATCH, 4):
        g = flat(torch.autograd.grad(torch.nn.functional.mse_loss(model(X[batch]), y[batch]), params))
        running_sum = running_sum + g
        torch.nn.functional.mse_loss(model(X[batch]), y[batch]).backward()
        assert torch.equal(flat(p.grad for p in params), running_sum)
        optimizer.step()
    torch.nn.functional.mse_loss(model(X), y).backward()
    before = flat(params).detach()
    optimizer.step()
    torch.testing.assert_close(flat(params).detach() - before, -LR * flat(p.grad for p in params))


# ---- section 4: momentum 1 -------------------------------------------------------------------------------------
def test_section4_forgotten_loop_is_sgd_with_momentum_one_bit_for_bit_on_minibatches(runs):
    momentum_one = train(SGD, LR, NUM_STEPS, train_batch_size=BATCH, momentum=1.0, dampening=0.0)
    assert runs["forgot"][0] == momentum_one[0] and runs["forgot"][2] == momentum_one[2]
    assert runs["forgot"][0] != train(SGD, LR, NUM_STEPS, train_batch_size=BATCH, momentum=0.9)[0]


def test_section4_momentum_one_bit_for_bit_on_the_full_batch_and_the_small_learning_rate_too():
    for dtype in (torch.float64, torch.float32):
        forgot = train(SGD, LR, 300, zero_grad=False, dtype=dtype)
        assert forgot[0] == train(SGD, LR, 300, dtype=dtype, momentum=1.0, dampening=0.0)[0]
    assert train(SGD, 0.001, 1500, zero_grad=False)[0] == train(SGD, 0.001, 1500, momentum=1.0)[0]


# ---- section 5: why; the full batch is the special case ---------------------------------------------------------
def test_section5_on_the_full_batch_the_swing_keeps_one_size_and_the_correct_loop_settles(runs):
    lowest = lowest_loss()
    assert round(lowest, 4) == 0.0105
    correct = runs["full_correct"][0]
    assert [round(v, 2) for v in peaks_per_100(correct)] == [11.8] + [0.01] * 5
    assert max(correct[200:]) - lowest < 1e-9  # at the minimum, to 9 decimals
    forgot = peaks_per_100(runs["full_forgot"][0])
    assert [round(v, 2) for v in forgot] == [12.09, 12.0, 12.0, 12.06, 12.08, 11.92]
    assert max(forgot) / min(forgot) < 1.02  # one size
    assert min(runs["full_forgot"][0][-100:]) > 5 * lowest  # and never settles


def test_section5_paths_one_settles_the_other_swings_back_near_the_start(runs):
    X, y = problem()
    best = least_squares_minimum(X, y)
    correct, forgot = runs["full_correct"][2], runs["full_forgot"][2][:41]
    start = correct[0]
    assert math.dist(correct[40], best) < 0.1  # on the star after 40 steps (0.06 away)
    assert min(math.dist(p, best) for p in forgot[1:10]) < 0.6  # rushes past the minimum (0.52)
    assert max(math.dist(p, best) for p in forgot[5:15]) > 0.95 * math.dist(start, best)  # far side
    assert min(math.dist(p, start) for p in forgot[15:41]) < 0.3  # back near the start (0.22)


def test_section5_the_drawn_surface_is_the_loss_of_the_model():
    X, y = problem()
    w_values, b_values = torch.tensor([-1.0, 0.5, 3.0]), torch.tensor([2.0, -0.25])
    surface = mse_surface(X, y, w_values, b_values)
    for i, b in enumerate(b_values.tolist()):
        for j, w in enumerate(w_values.tolist()):
            torch.testing.assert_close(surface[i, j].item(), torch.nn.functional.mse_loss(X * w + b, y).item())


def test_section5_noise_free_targets_diverge_just_the_same(runs):
    clean_data = dataset(noise=0.0)
    torch.testing.assert_close(clean_data.X, dataset().X)  # the same points
    torch.testing.assert_close(clean_data.y, clean_data.X @ clean_data.weight + clean_data.bias)  # exact targets
    clean = peaks_per_100(train(SGD, LR, NUM_STEPS, zero_grad=False, train_batch_size=BATCH, data=clean_data)[0])
    noisy = peaks_per_100(runs["forgot"][0])
    assert all(0.8 < c / n < 1.25 for c, n in zip(clean, noisy))
    assert [f"{v:.3g}" for v in clean] == ["22.9", "1.03e+03", "4.72e+03", "9.39e+04", "1.75e+05", "1.27e+06"]


def _frictionless(grad_of, num_steps=NUM_STEPS):
    """Momentum 1 on (w, b) with a given gradient function of (theta, batch): the loop without zero_grad."""
    data = dataset()
    A = torch.cat([data.X, torch.ones_like(data.X)], dim=1)
    theta = torch.tensor([-1.0, 2.0], dtype=torch.float64, device=device)
    running, losses = torch.zeros_like(theta), []
    for batch in minibatches(BATCH, num_steps):
        losses.append(((A[batch] @ theta - data.y[batch].flatten()) ** 2).mean().item())
        running = running + grad_of(theta, A, data.y.flatten(), batch)
        theta = theta - LR * running
    return peaks_per_100(losses)


def test_section5_the_changing_curvature_pumps_the_swing_and_the_noise_alone_does_not():
    """Why minibatches diverge: not the random walk of summed noise, but the bowl changing shape."""
    best = torch.linalg.lstsq(torch.cat([problem()[0], torch.ones_like(problem()[0])], 1), problem()[1]).solution

    def minibatch(theta, A, y, batch):  # what the notebook's loop adds
        return 2 * A[batch].T @ (A[batch] @ theta - y[batch]) / len(A[batch])

    def fixed_bowl_plus_noise(theta, A, y, batch):  # the full batch's curvature, each batch's noise
        full = 2 * A.T @ (A @ theta - y) / len(A)
        noise = minibatch(best.flatten(), A, y, batch)  # the batch's gradient at the minimum
        return full + noise

    def changing_bowl_no_noise(theta, A, y, batch):  # each batch's curvature, one shared minimum
        return 2 * A[batch].T @ (A[batch] @ (theta - best.flatten())) / len(A[batch])

    pumped = _frictionless(changing_bowl_no_noise)
    noise_only = _frictionless(fixed_bowl_plus_noise)
    real = _frictionless(minibatch)
    assert real[-1] > 1e4 * real[0] and pumped[-1] > 1e4 * pumped[0]
    assert noise_only[-1] < 3 * noise_only[0]  # a random walk: far slower


def test_section5_batches_of_8_grow_more_slowly_and_never_settle():
    lowest = lowest_loss()
    eight = peaks_per_100(train(SGD, LR, NUM_STEPS, zero_grad=False, train_batch_size=8)[0])
    assert [f"{v:.3g}" for v in eight] == ["17.8", "12.7", "8.43", "12.4", "15.3", "26.8"]
    grew = []
    for seed in range(8):
        losses = train(SGD, LR, NUM_STEPS, zero_grad=False, train_batch_size=8, seed=seed)[0]
        peaks = peaks_per_100(losses)
        assert peaks[-1] < 100 * peaks[0]  # far more slowly than batches of 4 (over 10,000 times)
        assert max(losses[500:]) > 100 * lowest  # never settles
        grew.append(peaks[-1] > peaks[0])
    assert not all(grew)  # "with other shuffles, some do not grow at all within 600 steps"


# ---- section 6: the trap -----------------------------------------------------------------------------------------
def test_section6_a_short_run_hides_the_bug():
    with_zero_grad = train(SGD, 0.001, 1500)[0]
    without = train(SGD, 0.001, 1500, zero_grad=False)[0]
    at = {step: (with_zero_grad[step - 1], without[step - 1]) for step in (30, 100, 300, 1000, 1500)}
    assert [b < a for a, b in at.values()] == [True, True, True, False, False]
    assert 8 < at[100][0] / at[100][1] < 10  # "about 9 times lower" at step 100
    assert 190 < at[1500][1] / at[1500][0] < 230  # "200 times higher" at step 1500
    assert with_zero_grad[-1] < with_zero_grad[-2]  # "the correct loop is still improving"


# ---- section 7: Adam ---------------------------------------------------------------------------------------------
def test_section7_beta1_sets_the_growth_and_pure_division_does_not_grow():
    """The old 'why' (Adam divides by the sums' size, so it swings wider) fails: with beta1 = 0
    there is only the division, and the swings do not grow."""
    assert abs(train(Adam, 0.1, 300)[0][-1] - lowest_loss()) < 1e-4  # correct Adam settles
    peaks = {beta1: swing_peaks(train(Adam, 0.1, 300, zero_grad=False, betas=(beta1, 0.999))[0])
             for beta1 in (0.9, 0.5, 0.0)}
    assert peaks == {0.9: [13.7, 33.1, 66.5, 113.9], 0.5: [6.9, 7.6, 8.6, 10.2, 12.1, 13.7],
                     0.0: [5.6, 5.0, 4.7, 4.7, 4.7, 4.8, 4.5]}
    assert all(a < b for a, b in zip(peaks[0.9], peaks[0.9][1:]))  # each swing higher
    assert all(a < b for a, b in zip(peaks[0.5], peaks[0.5][1:])) and peaks[0.5][-1] < peaks[0.9][-1] / 5
    assert peaks[0.0][-1] < peaks[0.0][0]  # "a little smaller"


def sign_changes(beta1):
    X, y = problem()
    model = make_model()
    optimizer = Adam(model.parameters(), lr=0.1, betas=(beta1, 0.999))
    grad_signs, m_signs = [], []
    for _ in range(300):
        torch.nn.functional.mse_loss(model(X), y).backward()
        optimizer.step()
        grad_signs.append(model.weight.grad.item() > 0)
        m_signs.append(optimizer.state[model.weight]["exp_avg"].item() > 0)

    def turns(s):
        return [t for t in range(1, len(s)) if s[t] != s[t - 1]]

    return turns(grad_signs), turns(m_signs)


def test_section7_m_turns_8_steps_after_the_running_sum_and_less_averaging_lags_less():
    grad_turns, m_turns = sign_changes(0.9)
    assert grad_turns == [48, 111, 187, 279] and m_turns == [56, 119, 195, 287]
    assert [b - a for a, b in zip(grad_turns, m_turns)] == [8, 8, 8, 8]
    grad_half, m_half = sign_changes(0.5)
    lags = [b - a for a, b in zip(grad_half, m_half)]
    assert lags and max(lags) < 8  # "the more averaging, the later the pull"


# ---- section 8 ------------------------------------------------------------------------------------------------------
def train_zeroing(where, optimizer_class, lr, num_steps=50, set_to_none=True):
    X, y = problem()
    model = make_model()
    optimizer = optimizer_class(model.parameters(), lr=lr)
    for _ in range(num_steps):
        if where == "first":
            optimizer.zero_grad(set_to_none=set_to_none)
        torch.nn.functional.mse_loss(model(X), y).backward()
        if where == "between":
            optimizer.zero_grad(set_to_none=set_to_none)
        optimizer.step()
        if where == "last":
            optimizer.zero_grad(set_to_none=set_to_none)
    return model, optimizer


@pytest.mark.parametrize("optimizer_class, lr", [(SGD, 0.05), (Adam, 0.1)])
def test_section8_zero_grad_first_or_last_is_identical_between_trains_nothing(optimizer_class, lr):
    start = flat(make_model().parameters())
    first, _ = train_zeroing("first", optimizer_class, lr)
    last, _ = train_zeroing("last", optimizer_class, lr)
    assert torch.equal(flat(first.parameters()), flat(last.parameters()))
    assert not torch.equal(flat(first.parameters()), start)
    broken, optimizer = train_zeroing("between", optimizer_class, lr)
    assert torch.equal(flat(broken.parameters()), start) and len(optimizer.state) == 0
    zeros, _ = train_zeroing("between", optimizer_class, lr, set_to_none=False)
    assert torch.equal(flat(zeros.parameters()), start)  # a zero gradient moves nothing either


# ---- section 9 ------------------------------------------------------------------------------------------------------
def train_two_optimizers(zero_grad, num_steps=200):
    X, y = problem()
    model = make_model()
    optimizers = [SGD([model.weight], lr=0.05), SGD([model.bias], lr=0.05)]
    losses = []
    for _ in range(num_steps):
        zero_grad(model, optimizers)
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        losses.append(loss.item())
    return losses


def test_section9_clearing_one_of_two_optimizers_leaves_the_bias_swinging():
    lowest = lowest_loss()
    weight_only = train_two_optimizers(lambda m, opts: opts[0].zero_grad())[-100:]
    whole_model = train_two_optimizers(lambda m, opts: m.zero_grad())[-100:]
    each = train_two_optimizers(lambda m, opts: [o.zero_grad() for o in opts])[-100:]
    assert max(weight_only) > 1.0 and min(weight_only) > lowest
    assert (round(min(weight_only), 4), round(max(weight_only), 4)) == (0.015, 5.8255)
    assert max(whole_model) - lowest < 1e-5 and whole_model == each  # settled (printed: 0.0105)


def test_section9_model_and_optimizer_zero_grad_agree_when_they_hold_the_same_parameters():
    X, y = problem()
    model = make_model()
    optimizer = SGD(model.parameters(), lr=0.05)
    for clear in (model.zero_grad, optimizer.zero_grad):
        torch.nn.functional.mse_loss(model(X), y).backward()
        clear()
        assert all(p.grad is None for p in model.parameters())


# ---- section 10 -----------------------------------------------------------------------------------------------------
def test_section10_zero_grad_leaves_the_momentum_buffer_and_adams_state_untouched():
    X, y = problem()
    model = make_model()
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    suggestions = []
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        suggestions.append(model.weight.grad.clone())
        optimizer.step()
    buffer = optimizer.state[model.weight]["momentum_buffer"].clone()
    g1, g2, g3 = suggestions
    torch.testing.assert_close(buffer, 0.81 * g1 + 0.9 * g2 + g3)
    optimizer.zero_grad()
    assert model.weight.grad is None and torch.equal(optimizer.state[model.weight]["momentum_buffer"], buffer)

    model = make_model()
    optimizer = Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        optimizer.step()
    state = optimizer.state[model.weight]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and float(state["step"]) == 3.0
    before = {name: value.clone() for name, value in state.items()}
    optimizer.zero_grad()
    assert all(torch.equal(before[name], state[name]) for name in state)


# ---- the limits of the claims ----------------------------------------------------------------------------------
def largest_curvature():
    X, y = problem()
    A = torch.cat([X, torch.ones_like(X)], dim=1)
    return torch.linalg.eigvalsh(2 * A.T @ A / len(A)).max().item()


@pytest.mark.parametrize("fraction", [0.3, 0.95])
def test_section5_full_batch_swings_keep_one_size_at_any_lr_where_plain_sgd_converges(fraction):
    lr = fraction * 2 / largest_curvature()  # plain SGD converges below 2 / lambda_max
    assert train(SGD, lr, 600)[0][-1] < 1.01 * lowest_loss()
    peaks = peaks_per_100(train(SGD, lr, 600, zero_grad=False)[0])
    assert max(peaks) / min(peaks) < 1.05


def test_section5_beyond_that_the_full_batch_diverges_too():
    """So 'one size' is a statement about this learning rate range, not about every run."""
    peaks = peaks_per_100(train(SGD, 1.05 * 4 / largest_curvature(), 300, zero_grad=False)[0])
    assert peaks[-1] > 1e10 * peaks[0]


def test_section2_a_correct_loop_with_too_high_a_learning_rate_diverges_norm_and_all():
    """Why the notebook says the norm tells you where to look, not what is wrong."""
    losses, norms, _ = train(SGD, 1.2 * 2 / largest_curvature(), 300, train_batch_size=BATCH)
    assert peaks_per_100(losses)[-1] > 1e10 * peaks_per_100(losses)[0]
    assert peaks_per_100(norms)[-1] > 1e10 * peaks_per_100(norms)[0]


# ---- claims narrowed by review (issue 12's fact-check) ---------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.95])
def test_section5_the_full_batch_swing_can_rise_above_the_start_but_at_most_to_about_twice_it(fraction):
    """"Its swings never grow", not "it never climbs higher than it started": a step of finite
    length lifts each direction's swing by 4 / (4 - lr * curvature), under 2 where plain SGD converges."""
    lr = fraction * 2 / largest_curvature()
    losses = train(SGD, lr, 600, zero_grad=False)[0]
    start = losses[0]
    assert max(losses) < 2 * start
    if fraction == 0.95:
        assert max(losses) > 1.5 * start  # so "never climbs higher" alone would be false


def log_peaks(losses, window=500):
    return [math.log10(max(losses[i : i + window])) for i in range(0, len(losses), window)]


@pytest.mark.parametrize("seed", range(3))
def test_section5_the_changing_bowl_grows_the_swing_geometrically_not_like_a_random_walk(seed):
    """Noise-free batches of 4: the highest loss gains decades at a steady rate (a factor per
    step); the same loop on a fixed bowl with noisy targets (a bias-only model: its curvature,
    2, is the same for every batch) grows like a random walk, by less and less."""
    clean = log_peaks(train(SGD, LR, 3000, zero_grad=False, train_batch_size=BATCH, seed=seed,
                            data=dataset(noise=0.0))[0])
    gains = [b - a for a, b in zip(clean, clean[1:])]
    assert min(gains[1:]) > 0.5 and sum(gains) > 8  # over 8 decades in 3000 steps, still climbing
    y = dataset().y.flatten()
    bias, running, walk = torch.tensor(2.0, dtype=torch.float64), 0.0, []
    for batch in minibatches(BATCH, 3000, seed=seed):
        walk.append(((bias - y) ** 2).mean().item())
        running = running + 2 * (bias - y[batch]).mean()  # the same bowl every step, noisy gradient
        bias = bias - LR * running
    walked = log_peaks(walk)
    assert walked[-1] - walked[0] < 2 and max(b - a for a, b in zip(walked[1:], walked[2:])) < 0.5


def test_section7_the_division_keeps_every_run_s_steps_short_whatever_beta1():
    """Why dividing by sqrt(v) is not the growth: the mean step is 0.1-0.2 long in all three runs
    (printed 0.17, 0.15, 0.12), while the running sum grows in the default run only."""
    means = {}
    for beta1 in (0.9, 0.5, 0.0):
        _, norms, path = train(Adam, 0.1, 300, zero_grad=False, betas=(beta1, 0.999))
        steps = [math.dist(p, q) for p, q in zip(path, path[1:])]
        means[beta1] = round(sum(steps) / len(steps), 2)
        if beta1 == 0.0:
            assert max(norms[-100:]) < max(norms[:100])  # with beta1 = 0 the sum does not even grow
        else:
            assert max(norms[-100:]) > max(norms[:100])
    assert means == {0.9: 0.17, 0.5: 0.15, 0.0: 0.12}
    assert all(0.1 <= v <= 0.2 for v in means.values())
    sgd_path = train(SGD, LR, 300, zero_grad=False)[2]
    assert sum(math.dist(p, q) for p, q in zip(sgd_path, sgd_path[1:])) / 300 > 0.5  # SGD's steps grow with the sum


def test_section7_while_m_lags_adam_moves_away_from_the_minimum():
    """"A step along the sum would head back, Adam steps along m, which still heads away": from the
    sum's sign change at step 48 to m's at step 56, w keeps moving away from the best w."""
    X, y = problem()
    best_w, _ = least_squares_minimum(X, y)
    model = make_model()
    optimizer = Adam(model.parameters(), lr=0.1)
    distances = []
    for _ in range(60):
        torch.nn.functional.mse_loss(model(X), y).backward()
        optimizer.step()
        distances.append(abs(model.weight.item() - best_w))
    assert all(b > a for a, b in zip(distances[47:55], distances[48:56]))  # still outward
    assert distances[56] < distances[55]  # turns once m has turned


def test_section7_the_same_lag_feeds_a_slower_swing_less():
    """"At a small learning rate ... the same lag feeds it less (try lr = 0.003 and 6000 steps)"."""
    slow = swing_peaks(train(Adam, 0.003, 6000, zero_grad=False)[0])
    assert len(slow) >= 4 and max(slow[1:]) <= slow[0]  # no swing higher than the first
    fast = swing_peaks(train(Adam, 0.1, 300, zero_grad=False)[0])
    assert fast[-1] > 5 * fast[0]


def test_section7_with_beta1_zero_the_swings_do_not_grow_in_a_long_run_either():
    peaks = swing_peaks(train(Adam, 0.1, 3000, zero_grad=False, betas=(0.0, 0.999))[0])
    assert len(peaks) > 20 and max(peaks[1:]) <= peaks[0]


def test_section8_first_and_last_differ_when_grad_is_not_empty_as_the_loop_begins():
    """The condition the notebook states: a backward() before the loop feeds the first step of a
    loop that clears last, and not one that clears first."""
    X, y = problem()
    results = {}
    for where in ("first", "last"):
        model = make_model()
        optimizer = SGD(model.parameters(), lr=LR)
        torch.nn.functional.mse_loss(model(X[:4]), y[:4]).backward()  # "to try the model"
        for _ in range(20):
            if where == "first":
                optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(X), y).backward()
            optimizer.step()
            if where == "last":
                optimizer.zero_grad()
        results[where] = flat(model.parameters())
    assert not torch.allclose(results["first"], results["last"])
    reference, _ = train_zeroing("first", SGD, LR, num_steps=20)
    assert torch.equal(results["first"], flat(reference.parameters()))  # first cleared the leftover
