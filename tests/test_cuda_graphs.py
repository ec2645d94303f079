"""CUDA-graph replay of the denoiser: refused off CUDA; on CUDA equal to eager for every row count."""

from __future__ import annotations

import pytest
import torch

from parapolicy.policy.config import SamplerConfig
from parapolicy.policy.runtime.cuda_graphs import GraphedDenoiser, row_bucket

CUDA = torch.cuda.is_available()


def test_row_buckets_are_powers_of_two():
    assert [row_bucket(r) for r in (1, 2, 3, 4, 5, 8, 9, 100)] == [1, 2, 4, 4, 8, 8, 16, 128]
    with pytest.raises(ValueError, match="rows"):
        row_bucket(0)


def test_cuda_graphs_are_refused_off_cuda(tiny_policy):
    with pytest.raises(ValueError, match="CUDA device"):
        tiny_policy.set_compile("cuda_graph")
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedDenoiser(tiny_policy.network, "cpu", (16, 2), 40)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_graphed_denoiser_equals_eager_for_every_row_count(tiny_policy):
    policy = tiny_policy.to("cuda").eval()
    gen = torch.Generator().manual_seed(0)
    policy.set_compile("cuda_graph")
    for rows in (1, 3, 8, 5, 16, 1):
        x = torch.randn(rows, 16, 2, generator=gen).cuda()
        t = torch.randint(0, 100, (rows,), generator=gen).cuda()
        c = torch.randn(rows, 40, generator=gen).cuda()
        with torch.no_grad():
            torch.testing.assert_close(policy.denoise(x, t, c), policy.network(x, t, c), atol=1e-5, rtol=1e-5)
    assert policy._compiled.buckets == (1, 4, 8, 16)
    policy.train()  # compiling and capturing leave the network's mode as it was
    policy.set_compile("cuda_graph")
    policy._compiled(x, t, c)
    assert policy.network.training and policy._compiled.buckets == (1,)
    policy.eval()
    with pytest.warns(UserWarning, match="reset to 'none'"):
        policy.to("cpu")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_picard_with_cuda_graphs_matches_sequential(tiny_policy):
    policy = tiny_policy.to("cuda").eval()
    policy.set_compile("cuda_graph")
    obs = {"obs": torch.rand(2, 2, 20, generator=torch.Generator().manual_seed(1)) * 512}
    policy.set_sampler(SamplerConfig(num_inference_steps=30, algorithm="picard", window=8, tol=1e-6))
    par = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(2))
    policy.set_sampler(SamplerConfig(num_inference_steps=30))
    seq = policy.predict_action_chunk(obs, noise=(par.x_T, par.noise))
    torch.testing.assert_close(par.plan, seq.plan, atol=1e-2, rtol=0)  # px
    policy.to("cpu")
