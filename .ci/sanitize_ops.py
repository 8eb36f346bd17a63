"""Direct calls of every CPU op of torch.ops.vissiam_kernels, for .ci/sanitize.sh.

The kernel tests reach the ops through the public API; this adds a small grid that
calls each op itself, so every op runs under ASan/UBSan even if the tests change,
and on the inputs where memory bugs hide: row lengths around the 8- and 16-wide
vector loops (tails), fresh exact-size buffers (the last row ends at the heap
redzone), B = 0, several views, non-contiguous / transposed / expanded (row stride
0) / storage-offset views, every dtype, extreme kappa, and the documented errors
(raised from inside the parallel loops). Values are checked elsewhere; here only
shapes, finiteness of the valid cases, and that bad input raises ValueError/TypeError.
"""

from __future__ import annotations

import itertools

import torch

from vissiam_kernels._extension import load_cpu_library

load_cpu_library()
ops = torch.ops.vissiam_kernels
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DIMS = (2, 7, 8, 9, 15, 16, 17, 31, 33, 130)
calls = dict.fromkeys(
    [
        "spherical_nll",
        "spherical_loss_forward",
        "spherical_loss",
        "scaled_row_combination",
        "normalizer_quantity",
        "special_function",
        "angle_kappa_derivative",
    ],
    0,
)


def layouts(rows: int, dim: int, dtype: torch.dtype):
    """(name, tensor) pairs of one (rows, dim) matrix in different memory layouts."""
    yield "contiguous", torch.randn(rows, dim, dtype=dtype)
    yield "transposed", torch.randn(dim, rows, dtype=dtype).t()
    yield "column-strided", torch.randn(rows, 2 * dim, dtype=dtype)[:, ::2]
    yield "offset", torch.randn(rows * dim + 3, dtype=dtype)[3:].view(rows, dim)
    yield "expanded", torch.randn(1, dim, dtype=dtype).expand(rows, dim)


def expect_error(fn, *args) -> None:
    try:
        fn(*args)
    except (ValueError, TypeError, RuntimeError):
        return
    raise AssertionError(f"{fn} accepted bad input")


def check_nll() -> None:
    torch.manual_seed(0)
    for dtype, dim, rows in itertools.product(DTYPES, DIMS, (0, 1, 5)):
        for (name_m, mu), (_, target) in zip(layouts(rows, dim, dtype), layouts(rows, dim, dtype)):
            for family in (0, 1, 2):
                kappa = [] if family == 0 else [torch.rand(rows, dtype=dtype) * 50]
                nll, state = ops.spherical_nll([mu], [target], kappa, family)
                calls["spherical_nll"] += 1
                assert nll.shape == (rows,) and state.shape == (rows, 4), name_m
                assert bool(torch.isfinite(nll).all()), (dtype, dim, rows, name_m, family)
                for grad_mu, grad_target in ((True, True), (True, False), (False, True)):
                    for reduction in (0, 1, 2):
                        out = ops.spherical_loss_forward([mu], [target], kappa, family, reduction, 0.0, True,
                                                         grad_mu, grad_target)
                        calls["spherical_loss_forward"] += 1
                        _, _, gm, gt = out
                        assert len(gm) == int(grad_mu) and len(gt) == int(grad_target)
                check_loss_with_backward(mu, target, kappa, family)
                coef = torch.randn(rows, dtype=torch.float64)
                (out,) = ops.scaled_row_combination(coef, coef, coef, [mu], [target])
                calls["scaled_row_combination"] += 1
                assert out.shape == (rows, dim) and out.is_contiguous()


def check_loss_with_backward(mu, target, kappa, family) -> None:
    """The public op with its C++ autograd: every reduction, fused and deferred paths, scaled upstream."""
    p = mu.detach().clone().requires_grad_()
    k = [t.detach().clone().requires_grad_() for t in kappa]
    kl_weight = 0.0 if family == 0 else 0.1
    for reduction in (0, 1, 2):
        loss = ops.spherical_loss([p, p], [target, target], k + k, family, reduction, kl_weight, "p z k p z k")
        (2.0 * loss).sum().backward()
        calls["spherical_loss"] += 1


def check_multi_view() -> None:
    for dtype, family in itertools.product(DTYPES, (0, 1, 2)):
        shapes = ((3, 17), (0, 17), (5, 17))
        mu = [torch.randn(*s, dtype=dtype) for s in shapes]
        target = [torch.randn(*s, dtype=dtype) for s in shapes]
        kappa = [] if family == 0 else [torch.rand(s[0], dtype=torch.float64) * 10 for s in shapes]
        nll, state = ops.spherical_nll(mu, target, kappa, family)
        same = [torch.randn(5, 17, dtype=dtype) for _ in range(3)]  # the loss averages views row by row
        kappa_same = [] if family == 0 else [torch.rand(5, dtype=torch.float64) * 10 for _ in range(3)]
        ops.spherical_loss_forward(same, same[::-1], kappa_same, family, 1, 0.0, False, True, True)
        coef = torch.randn(8, dtype=torch.float32)
        outs = ops.scaled_row_combination(coef, coef, coef, mu, target)
        assert nll.shape == (8,) and [o.shape for o in outs] == [m.shape for m in mu]
        calls["spherical_nll"] += 1
        calls["spherical_loss_forward"] += 1
        calls["scaled_row_combination"] += 1


def check_extreme_kappa() -> None:
    special = [0.0, 5e-324, 1e-300, 1e-30, 1e-3, 1.0, 1e3, 1e5, 1e7, 1e15, 1e300]
    kappa = torch.tensor(special, dtype=torch.float64)
    for dim, family in itertools.product((2, 3, 4, 64, 2048, 5000), (1, 2)):
        mu = torch.randn(len(special), dim, dtype=torch.float64)
        target = mu + 0.1 * torch.randn_like(mu)
        ops.spherical_nll([mu], [target], [kappa], family)
        ops.spherical_loss_forward([mu], [target], [kappa], family, 1, 0.5, True, True, True)
        calls["spherical_nll"] += 1
        calls["spherical_loss_forward"] += 1
        for quantity in range(5):
            for dtype in (torch.float32, torch.float64):
                k = kappa.to(dtype)
                k = k[torch.isfinite(k)]  # 1e300 overflows float32
                out = ops.normalizer_quantity(k, dim, family, quantity)
                assert out.shape == k.shape
                grid = k.reshape(1, -1).expand(3, -1)  # non-contiguous, 2-D
                assert ops.normalizer_quantity(grid, dim, family, quantity).shape == grid.shape
                calls["normalizer_quantity"] += 2
    empty = torch.empty(0, 3, dtype=torch.float32)
    assert ops.normalizer_quantity(empty, 8, 2, 0).shape == (0, 3)


def check_special_functions() -> None:
    names = [
        "lgamma_difference",
        "digamma_difference",
        "trigamma_difference",
        "log2_plus_digamma_difference",
        "log_bessel_i",
        "log_bessel_i_scaled",
        "bessel_ratio",
        "bessel_ratio_complement",
    ]
    values = torch.tensor([0.0, 5e-324, 1e-30, 1e-3, 0.5, 1.0, 2.5, 1e2, 1023.0, 1e5, 1e7, 1e15, 1e300])
    a, b = (g.reshape(-1).to(torch.float64) for g in torch.meshgrid(values, values, indexing="ij"))
    for name in names:
        out = ops.special_function(name, a, b)
        assert out.shape == a.shape
        ops.special_function(name, a[:0], b[:0])
        ops.special_function(name, a.reshape(13, 13).t(), b.reshape(13, 13).t())
        calls["special_function"] += 3


def check_errors() -> None:
    mu = torch.randn(4, 9)
    bad_kappa = torch.tensor([1.0, -1.0, float("nan"), float("inf")])
    for family in (1, 2):
        expect_error(ops.spherical_nll, [mu], [mu], [bad_kappa], family)
        expect_error(ops.spherical_loss_forward, [mu], [mu], [bad_kappa], family, 1, 0.0, True, True, True)
        expect_error(ops.spherical_loss, [mu], [mu], [bad_kappa], family, 1, 0.0, "mu target kappa")
        expect_error(ops.normalizer_quantity, bad_kappa, 9, family, 0)
    expect_error(ops.spherical_nll, [mu], [mu[:3]], [], 0)
    expect_error(ops.spherical_nll, [mu], [mu], [], 3)
    expect_error(ops.spherical_nll, [], [], [], 0)
    expect_error(ops.spherical_nll, [torch.randn(4, 1)], [torch.randn(4, 1)], [], 0)
    expect_error(ops.spherical_nll, [mu], [mu.double()], [], 0)
    expect_error(ops.spherical_nll, [mu], [mu], [torch.ones(3)], 1)
    expect_error(ops.normalizer_quantity, torch.ones(2), 1, 2, 0)
    expect_error(ops.normalizer_quantity, torch.ones(2), 8, 0, 0)
    expect_error(ops.normalizer_quantity, torch.ones(2), 8, 2, 5)
    expect_error(ops.normalizer_quantity, torch.ones(2, dtype=torch.int64), 8, 2, 0)
    expect_error(ops.special_function, "no_such_function", torch.ones(2).double(), torch.ones(2).double())
    expect_error(ops.special_function, "lgamma_difference", torch.ones(2).double(), torch.ones(3).double())
    expect_error(ops.special_function, "lgamma_difference", torch.ones(2), torch.ones(2))
    expect_error(ops.spherical_loss_forward, [mu, mu[:3]], [mu, mu[:3]], [], 0, 1, 0.0, True, True, True)
    expect_error(ops.spherical_loss_forward, [mu], [mu], [], 0, 3, 0.0, True, False, False)
    expect_error(ops.spherical_loss_forward, [mu], [mu], [torch.ones(4)], 1, 1, float("nan"), True, False, False)
    expect_error(ops.spherical_loss, [mu], [mu], [torch.ones(1, 4)], 1, 1, 0.0, "mu target kappa")
    expect_error(ops.spherical_loss, [mu], [mu[:, :8]], [], 0, 1, 0.0, "p z kappa")
    expect_error(ops.scaled_row_combination, torch.ones(4), torch.ones(4), torch.ones(4), [mu], [mu[:, :8]])
    expect_error(ops.scaled_row_combination, torch.ones(3), torch.ones(4), torch.ones(4), [mu], [mu])
    expect_error(ops.scaled_row_combination, torch.ones(4), torch.ones(4), torch.ones(4), [mu], [])


def check_angle_derivative() -> None:
    """d theta / d kappa (csrc/cpu/angle_law_cpu.cpp): both families and lane widths, d from 2 to
    65536, kappa from 0 to 1e9, angles across [0, pi] with its end points, tiny ones and NaN,
    non-contiguous and empty inputs, and the documented errors."""
    theta = torch.cat([torch.linspace(0.0, 3.141592653589793, 41, dtype=torch.float64),
                       torch.tensor([1e-300, 1e-12, 3.141592653589793 - 1e-12, float("nan")], dtype=torch.float64)])
    for family, dim, kappa, vectorized in itertools.product((1, 2), (2, 3, 130, 65536), (0.0, 1.0, 1e3, 1e9), (True, False)):
        k = torch.full_like(theta, kappa)
        out = ops.angle_kappa_derivative(theta, k, dim, family, vectorized)
        assert out.shape == theta.shape and torch.isfinite(out[:-1]).all(), (family, dim, kappa)
        ops.angle_kappa_derivative(theta[::3], k[::3], dim, family, vectorized)
        ops.angle_kappa_derivative(theta[:0], k[:0], dim, family, vectorized)
        calls["angle_kappa_derivative"] += 3
    good = torch.ones(3, dtype=torch.float64)
    expect_error(ops.angle_kappa_derivative, good, good[:2], 5, 1)
    expect_error(ops.angle_kappa_derivative, good.float(), good, 5, 1)
    expect_error(ops.angle_kappa_derivative, good, good, 1, 1)
    expect_error(ops.angle_kappa_derivative, good, good, 5, 0)


def main() -> None:
    for threads in (1, 2):  # serial and parallel at::parallel_for
        torch.set_num_threads(threads)
        check_nll()
        check_multi_view()
        check_extreme_kappa()
        check_special_functions()
        check_angle_derivative()
        check_errors()
    missing = [name for name, count in calls.items() if count == 0]
    assert not missing, f"ops not called: {missing}"
    print("sanitize_ops: calls per op: " + ", ".join(f"{k} {v}" for k, v in calls.items()))


if __name__ == "__main__":
    main()
