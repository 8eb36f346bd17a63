"""The Triton backend on CUDA tensors: the whole suite of tests/triton_cases.py, plus what needs a GPU
(torch.compile through the triton_op, opcheck, the minimum-traffic path at a realistic size).

Marked ``gpu``; skipped without a CUDA device (run by the GPU check script on a lent machine).
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import GPU_COLLECTOR_MARKS as GPU_MARKS

pytestmark = GPU_MARKS


def test_a_cuda_device_is_visible():
    """Stands for this file where the suite cannot run (then skipped, with the reason above)."""
    assert torch.cuda.is_available()


if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    from triton_cases import *  # noqa: F401,F403  (every case, collected here on CUDA tensors)
    from triton_cases import CODES, OPS, make_inputs, relative_gradient_error, triton_ops
    from triton_cases import pytestmark as case_marks

    # The star import brought the cases module's own pytestmark, which replaced this module's:
    # without this line `pytest -m gpu` deselected every case (tests/test_gpu_collection.py).
    pytestmark = GPU_MARKS + [case_marks]

    import vissiam_kernels as vk
    from vissiam_kernels import reference

    @pytest.mark.parametrize("distribution", ["power_spherical", "vmf", "none"])
    def test_compile_fullgraph_matches_eager(distribution):
        p1, z2, k1 = make_inputs((64,), 256, seed=1)
        p2, z1, k2 = make_inputs((64,), 256, seed=2)
        kappas = (None, None) if distribution == "none" else (k1.requires_grad_(), k2.requires_grad_())

        def loss(a, b):
            return vk.vi_simsiam_loss(a, b, z1, z2, *kappas, distribution=distribution)

        compiled = torch.compile(loss, fullgraph=True)
        results = []
        for fn in (loss, compiled):
            a, b = p1.clone().requires_grad_(), p2.clone().requires_grad_()
            out = fn(a, b)
            out.backward()
            results.append((out.detach(), a.grad, b.grad))
        assert torch.allclose(results[0][0], results[1][0], rtol=1e-6)
        for eager_grad, compiled_grad in zip(results[0][1:], results[1][1:]):
            assert torch.allclose(eager_grad, compiled_grad, rtol=1e-5, atol=1e-7)

    def test_compile_fused_training_path():
        p, z, kappa = make_inputs((128,), 512, seed=3)
        weight = triton_ops.predicted_upstream_weight("mean", 128)
        fn = lambda a, k: triton_ops.spherical_nll_training([a], [z], [k], CODES["power_spherical"], weight).mean()  # noqa: E731
        compiled = torch.compile(fn, fullgraph=True)
        grads = []
        for f in (fn, compiled):
            a, k = p.clone().requires_grad_(), kappa.clone().requires_grad_()
            f(a, k).backward()
            grads.append((a.grad, k.grad))
        assert relative_gradient_error(grads[1][0], grads[0][0]) <= 1e-6
        assert relative_gradient_error(grads[1][1], grads[0][1]) <= 1e-6

    @pytest.mark.parametrize("family", [0, 1, 2])
    def test_opcheck_spherical_nll(family):
        mu, target, kappa = make_inputs((5,), 33, seed=family)
        kappas = [] if family == 0 else [kappa.requires_grad_()]
        torch.library.opcheck(OPS.spherical_nll.default, ([mu.requires_grad_()], [target], kappas, family))

    def test_opcheck_scaled_row_combination_and_normalizer_quantity():
        x, y, kappa = make_inputs((4,), 40)
        state = torch.randn(4, 4, dtype=torch.float64, device="cuda")
        torch.library.opcheck(OPS.scaled_row_combination.default, (kappa, state[:, 0], state[:, 2], [x], [y]))
        for quantity in range(5):
            torch.library.opcheck(OPS.normalizer_quantity.default, (kappa.double().requires_grad_(), 64, 2, quantity))

    def test_opcheck_fused_op():
        p, z, kappa = make_inputs((6,), 64)
        torch.library.opcheck(OPS.spherical_nll_with_grad.default,
                              ([p], [z], [kappa], 2, 1.0 / 6, True, False), test_utils=("test_schema", "test_faketensor"))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
    def test_training_size_matches_reference_and_is_deterministic(dtype):
        """B = 4096, D = 2048: both training paths against the float64 reference; bitwise repeatable."""
        p1, z2, k1 = make_inputs((4096,), 2048, dtype, kappa_scale=1e4, seed=1)
        p2, z1, k2 = make_inputs((4096,), 2048, dtype, kappa_scale=1e4, seed=2)
        runs = []
        for _ in range(2):
            a, b = p1.clone().requires_grad_(), p2.clone().requires_grad_()
            weight = triton_ops.predicted_upstream_weight("mean", 4096, 0.5)
            nll = triton_ops.spherical_nll_training([a, b], [z2, z1], [k1, k2], CODES["power_spherical"], weight)
            loss = 0.5 * (nll[:4096] + nll[4096:])
            loss.mean().backward()
            runs.append((loss.detach(), a.grad, b.grad))
        for x, y in zip(runs[0], runs[1]):
            assert torch.equal(x, y)
        a64 = p1.detach().double().cpu().requires_grad_()
        ref = reference.power_spherical_nll(a64, z2.double().cpu(), k1.double().cpu(), "none")
        (0.5 * ref).mean().backward()
        limit = 1e-5 if dtype == torch.float32 else 2.0 ** -7
        assert relative_gradient_error(runs[0][1], a64.grad) <= limit
        assert torch.allclose(runs[0][0][:4096].double().cpu(), 0.5 * ref.detach() + 0.5 * reference.power_spherical_nll(
            p2.double().cpu(), z1.double().cpu(), k2.double().cpu(), "none"), rtol=1e-6)

    def test_autotuned_launches_match_the_table(monkeypatch):
        """VISSIAM_TRITON_AUTOTUNE=1: the autotuner's configurations give the table's results (to rounding)."""
        p, z, kappa = make_inputs((64,), 256, seed=4)
        table, _ = OPS.spherical_nll([p], [z], [kappa], CODES["power_spherical"])
        monkeypatch.setattr(triton_ops, "AUTOTUNE", True)
        tuned, _ = OPS.spherical_nll([p], [z], [kappa], CODES["power_spherical"])
        assert torch.allclose(tuned, table, rtol=1e-6)

    def test_bad_kappa_is_an_asynchronous_device_assert_in_a_subprocess():
        """The device-side assert poisons the CUDA context, so it is raised in a child process."""
        import subprocess
        import sys

        code = (
            "import torch, vissiam_kernels as vk\n"
            "k = torch.ones(4, device='cuda'); k[1] = -1.0\n"
            "p = torch.randn(4, 8, device='cuda')\n"
            "out = vk.power_spherical_nll(p, p, k)\n"
            "torch.cuda.synchronize()\n"
        )
        env = dict(os.environ, VISSIAM_BACKEND="triton")
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0
        assert "kappa must be finite and >= 0" in result.stderr or "device-side assert" in result.stderr
