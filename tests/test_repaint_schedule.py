"""RePaint's resampling schedule (Lugmayr et al. 2022): which grid steps ``pipelines.inpaint``
runs, and how often, compared with an independent port of the paper's ``get_schedule_jump``
(andreas128/RePaint, without its optional second and third jump levels)."""
import pytest
import torch

import diffusionlab.pipelines.inpaint as ip
from diffusionlab.core.protocol import DenoiserInfo


def paper_schedule(t_T: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The paper's state sequence: t_T - 1 (pure noise) down to 0, then -1 (the clean image).
    Reaching a jump point t in {0, J, 2J, ...} with t < t_T - J by a denoising step, the
    sampler noises back J states, at most jump_n_sample - 1 times per point."""
    left = {t: jump_n_sample - 1 for t in range(0, t_T - jump_length, jump_length)}
    t, states = t_T, []
    while t >= 1:
        t -= 1
        states.append(t)
        if left.get(t, 0) > 0:
            left[t] -= 1
            for _ in range(jump_length):
                t += 1
                states.append(t)
    states.append(-1)
    return states


def paper_visits(n: int, J: int, R: int) -> list[int]:
    """Denoising steps started at each grid index i (0 = sigma_max; paper state t <-> i = n-1-t)."""
    visits = [0] * n
    states = paper_schedule(n, J, R)
    for a, b in zip(states[:-1], states[1:]):
        if b < a:
            visits[n - 1 - a] += 1
    return visits


class Zero:
    info = DenoiserInfo(sigma_min=0.1, sigma_max=10.0, image_shape=(1, 4, 4))

    def __call__(self, x, sigma, cond=None):
        return torch.zeros_like(x)


def library_visits(monkeypatch, n, J, R):
    grid = torch.cat([torch.linspace(10.0, 0.1, n, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    where = {float(s): i for i, s in enumerate(grid)}
    events = []
    real = ip.sample

    def recording(den, shape, sampler, sigmas=None, **kw):
        a, b = where[float(sigmas[0])], where[float(sigmas[1])]
        assert b == a + 1                                     # one grid interval per call
        events.append(a)
        return real(den, shape, sampler, sigmas=sigmas, **kw)

    monkeypatch.setattr(ip, "sample", recording)
    monkeypatch.setattr(ip, "resolve_sigmas", lambda den, steps, **kw: grid)
    x = torch.zeros(2, 1, 4, 4)
    mask = ip.parse_mask("right", (1, 4, 4))
    out = ip.inpaint(Zero(), x, mask, steps=n, sampler="ddim", seed=0, jump_length=J, resample=R, reconstruction=0.0)
    assert torch.equal(out[:, :, :, :2], x[:, :, :, :2])
    visits = [0] * n
    for a in events:
        visits[a] += 1
    return visits, events


@pytest.mark.parametrize("n,J,R", [(16, 5, 3), (50, 10, 3), (20, 3, 2), (6, 3, 2), (10, 10, 4), (11, 10, 2),
                                   (4, 1, 3), (7, 2, 1), (1, 3, 3), (30, 7, 4)])
def test_visit_counts_match_the_papers_schedule(monkeypatch, n, J, R):
    visits, _ = library_visits(monkeypatch, n, J, R)
    assert visits == paper_visits(n, J, R)


@pytest.mark.parametrize("n,J,R", [(50, 10, 3), (20, 3, 2), (16, 5, 3)])
def test_the_lowest_segment_is_resampled_and_the_last_step_runs_once(monkeypatch, n, J, R):
    visits, events = library_visits(monkeypatch, n, J, R)
    assert visits[n - 1] == 1                                 # the step to sigma 0 is never repeated
    assert visits[n - 1 - J:n - 1] == [R] * J                 # the J steps above the lowest nonzero sigma: R times
    assert visits[:(n - 1) % J] == [1] * ((n - 1) % J)        # the partial top segment runs once
    # the same order as the paper: the step sequence, not only the counts
    states = paper_schedule(n, J, R)
    assert events == [n - 1 - a for a, b in zip(states[:-1], states[1:]) if b < a]
