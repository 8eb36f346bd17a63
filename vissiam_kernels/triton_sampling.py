"""Triton kernels of the sampling transform (issue 13), their launchers, and the ops
``vissiam_triton::sphere_sample_transform`` and ``vissiam_triton::sphere_sample_transform_backward``
(the schemas of csrc/ops.cpp). One op, one file: kernels -> launchers -> registration.

The math is csrc/cpu/sphere_sampling_cpu.cpp's, line for line (equations and the derivation of the
backward at the top of that file; vissiam_kernels/sampling_reference.py is the reference):

    x = H [t, s v],  v = z/|z|,  mu = l/max(|l|, eps),  m = mu[1:],  a = m.v,
    u1 = |m|^2/(1 + mu1) (mu1 > 0) or 1 - mu1,  rho = a/u1 (0 where u1 = 0: H = I at mu = e1),
    x1 = mu1 t + s a,  x[1:] = (s/|z|) z + ((t - s rho)/r) l[1:].

Each program takes BLOCK_R rows. The forward sums |l[1:]|^2, |z|^2, l[1:].z over the row (float64
accumulation; half types go through float32 right after the load, as the interpreter needs), does the
per-row scalars in float64, and writes x; when the row fits one block (ONE_BLOCK) it stays in
registers between the two, otherwise the write sweep reads it again (mostly from L2). The backward
(the same kernel with BACKWARD set) does the same with five sums over (l[1:], z, grad_x[1:]) and
writes grad_loc, grad_t and grad_s.
Launch parameters: ``launch_config`` (whole rows up to ONE_BLOCK_MAX_D elements in one block).
Row offsets are int64. Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1
(tests/test_sampling_transform.py runs it there against the reference).
"""

from __future__ import annotations

import torch

from . import _sampling_ops

NAMESPACE = "vissiam_triton"

try:
    import triton
    import triton.language as tl

    from . import triton_ops
    from .triton_kernels import NORMALIZE_EPS, _f64_like, _load_f64, _row_block, _store_type
except Exception as error:  # noqa: BLE001 - no triton, or one that cannot load here
    triton = tl = triton_ops = None
    _IMPORT_ERROR: Exception | None = error
else:
    _IMPORT_ERROR = None


if _IMPORT_ERROR is None:

    # ============================================================ kernels
    @triton.jit
    def _transform_row(l1, loc_loc, noise_noise, loc_noise):
        """The per-row scalars from the row sums (float64): |l|, r, mu1, q = |m|^2, |z|, a, u1, rho."""
        norm = tl.sqrt(l1 * l1 + loc_loc)
        eps = _f64_like(norm, NORMALIZE_EPS)
        r = tl.maximum(norm, eps)
        mu1 = l1 / r
        q = loc_loc / (r * r)
        noise_norm = tl.sqrt(noise_noise)
        a = loc_noise / (r * noise_norm)
        positive = mu1 > 0.0
        # 1 - mu1 = |m|^2 / (1 + mu1) for a unit mu: no cancellation as mu -> e1
        u1 = tl.where(positive, q / tl.where(positive, 1.0 + mu1, 1.0), 1.0 - mu1)
        reflects = u1 > 0.0
        rho = tl.where(reflects, a / tl.where(reflects, u1, 1.0), 0.0)
        return norm, r, mu1, q, noise_norm, a, u1, rho

    @triton.jit
    def _philox_normal(key, offset_lo, offset_hi, row, c):
        """Noise elements (row, c) of the seeded sampler as float64 (BLOCK_R, len(c)): the formulas of
        csrc/cpu/philox_normal.inc (Philox4x32-10 at counter (c // 4, row, offset_lo, offset_hi) under the
        64-bit key; float32 Box-Muller with the quadrant reduction and the Cephes sin/cos polynomials; log
        is tl.log), so the two backends agree to float32 rounding (not bit for bit). Polynomials, not
        tl.sin/tl.cos: libdevice's argument reduction keeps a local array (stack) the kernel need not have."""
        c0 = (c // 4).to(tl.uint32)[None, :] + (row * 0).to(tl.uint32)[:, None]
        zero = c0 * 0
        c1 = zero + row.to(tl.uint32)[:, None]
        x0, x1, x2, x3 = tl.random.philox(key, c0, c1, zero + offset_lo, zero + offset_hi)
        word = (c % 4)[None, :] + (row * 0)[:, None]
        first_pair = word < 2
        x_radius = tl.where(first_pair, x0, x2)
        x_angle = tl.where(first_pair, x1, x3)
        u = (x_radius >> 1).to(tl.float32) * 4.656612873077393e-10 + 2.3283064365386963e-10  # (x >> 1) 2^-31 + 2^-32
        radius = tl.sqrt(-2.0 * tl.log(u))
        # 2 pi x 2^-32 = quadrant pi/2 + phi, phi in [-pi/4, pi/4)
        shifted = x_angle + 0x20000000
        quadrant = (shifted >> 30).to(tl.int32)
        rest = (shifted & 0x3FFFFFFF).to(tl.int32) - 0x20000000
        phi = rest.to(tl.float32) * 1.4629180792671596e-09  # (pi/2) 2^-30
        z = phi * phi
        sin_phi = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * phi + phi
        cos_phi = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0
        swap = (quadrant & 1) != 0  # quadrant 0: (c, s); 1: (-s, c); 2: (-c, -s); 3: (s, -c)
        cos_abs = tl.where(swap, sin_phi, cos_phi)
        sin_abs = tl.where(swap, cos_phi, sin_phi)
        cos = tl.where(((quadrant + 1) & 2) != 0, -cos_abs, cos_abs)
        sin = tl.where((quadrant & 2) != 0, -sin_abs, sin_abs)
        return tl.where(word % 2 == 0, radius * cos, radius * sin).to(tl.float64)

    @triton.jit
    def _load_tail(loc_row, noise_row, g_row, row_ok, c, tail, BACKWARD: tl.constexpr, row, key, offset_lo,
                   offset_hi, SEEDED: tl.constexpr):
        """Columns c of the tails l[1:] and z, and of grad_x[1:] in the backward (else l[1:] stands in for
        it, unread), as float64 (BLOCK_R, len(c)) blocks, with their mask. SEEDED: z drawn from Philox
        (_philox_normal), the noise pointer unread."""
        mask = row_ok[:, None] & (c < tail)[None, :]
        lt = _load_f64(loc_row[:, None] + 1 + c[None, :], mask)
        if SEEDED:
            z = tl.where(mask, _philox_normal(key, offset_lo, offset_hi, row, c), 0.0)
        else:
            z = _load_f64(noise_row[:, None] + c[None, :], mask)
        g = lt
        if BACKWARD:
            g = _load_f64(g_row[:, None] + 1 + c[None, :], mask)
        return lt, z, g, mask

    @triton.jit
    def _combination(lt, z, g, coef_loc, coef_noise, coef_grad, BACKWARD: tl.constexpr):
        """coef_noise z + coef_loc l[1:] (the forward's x[1:]), + coef_grad grad_x[1:] in the backward."""
        value = coef_noise * z + coef_loc * lt
        if BACKWARD:
            value += coef_grad * g
        return value

    @triton.jit
    def sphere_transform_kernel(
        grad_x, loc, t_ptr, s_ptr, noise, out, grad_t, grad_s, seed,
        grad_x_stride, loc_stride, noise_stride, t_stride, s_stride,
        rows, D,
        BACKWARD: tl.constexpr,
        SEEDED: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_D: tl.constexpr,
        ONE_BLOCK: tl.constexpr,
    ):
        """BLOCK_R rows r of loc, noise: (rows, D), (rows, D-1); t, s: (rows,) float64.

        Forward (not BACKWARD): out[r] = x[r] = H [t[r], s[r] noise[r]/|noise[r]|] (grad_x, grad_t,
        grad_s are not read). BACKWARD: the pullback of grad_x (rows, D): out = grad_loc in loc's
        dtype, grad_t, grad_s (rows,) float64 (equations: csrc/cpu/sphere_sampling_cpu.cpp). The
        forward's three row sums, plus G.l[1:] and G.z in the backward, then one write sweep."""
        row = _row_block(BLOCK_R)
        row_ok = row < rows
        g_row = grad_x + row * grad_x_stride
        loc_row = loc + row * loc_stride
        noise_row = noise + row * noise_stride
        out_row = out + row * D
        tail = D - 1  # column j of the tail: loc[:, 1 + j], noise[:, j], out[:, 1 + j]
        cols = tl.arange(0, BLOCK_D)
        key = 0
        offset_lo = 0
        offset_hi = 0
        if SEEDED:  # seed: (key, offset) int64; the offset's two 32-bit words are counter words
            key = tl.load(seed)
            offset = tl.load(seed + 1)
            offset_lo = (offset & 0xFFFFFFFF).to(tl.uint32)
            offset_hi = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
        if ONE_BLOCK:  # BLOCK_D >= D - 1: the row stays in registers until out is written
            lt, z, g, mask = _load_tail(loc_row, noise_row, g_row, row_ok, cols, tail, BACKWARD, row, key, offset_lo, offset_hi,
                                          SEEDED)
            loc_loc = tl.sum(lt * lt, axis=1)
            noise_noise = tl.sum(z * z, axis=1)
            loc_noise = tl.sum(lt * z, axis=1)
            if BACKWARD:
                grad_dot_loc = tl.sum(g * lt, axis=1)
                grad_dot_noise = tl.sum(g * z, axis=1)
        else:
            acc_ll = tl.zeros([BLOCK_R, BLOCK_D], tl.float64)
            acc_zz = tl.zeros([BLOCK_R, BLOCK_D], tl.float64)
            acc_lz = tl.zeros([BLOCK_R, BLOCK_D], tl.float64)
            acc_gl = tl.zeros([BLOCK_R, BLOCK_D], tl.float64)
            acc_gz = tl.zeros([BLOCK_R, BLOCK_D], tl.float64)
            for start in range(0, tail, BLOCK_D):
                lt, z, g, mask = _load_tail(loc_row, noise_row, g_row, row_ok, start + cols, tail, BACKWARD, row, key,
                                              offset_lo, offset_hi, SEEDED)
                acc_ll += lt * lt
                acc_zz += z * z
                acc_lz += lt * z
                if BACKWARD:
                    acc_gl += g * lt
                    acc_gz += g * z
            loc_loc = tl.sum(acc_ll, axis=1)
            noise_noise = tl.sum(acc_zz, axis=1)
            loc_noise = tl.sum(acc_lz, axis=1)
            grad_dot_loc = tl.sum(acc_gl, axis=1)
            grad_dot_noise = tl.sum(acc_gz, axis=1)
        # rows past the end read zeros: give them a unit noise so that no 0/0 is evaluated
        noise_noise = tl.where(row_ok, noise_noise, 1.0)
        l1 = _load_f64(loc_row, row_ok)
        t = tl.load(t_ptr + row * t_stride, mask=row_ok, other=0.0).to(tl.float64)
        s = tl.load(s_ptr + row * s_stride, mask=row_ok, other=0.0).to(tl.float64)
        norm, r, mu1, q, noise_norm, a, u1, rho = _transform_row(l1, loc_loc, noise_noise, loc_noise)
        c_t = t - s * rho
        if BACKWARD:
            g1 = _load_f64(g_row, row_ok)
            grad_m = grad_dot_loc / r  # G.m
            grad_v = grad_dot_noise / noise_norm  # G.v
            tl.store(grad_t + row, g1 * mu1 + grad_m, mask=row_ok)
            tl.store(grad_s + row, g1 * a + grad_v - grad_m * rho, mask=row_ok)
            reflects = u1 > 0.0  # u1 = 0: mu = e1 exactly, H = I and rho a constant 0
            safe_u1 = tl.where(reflects, u1, 1.0)
            dl_da = s * (g1 - tl.where(reflects, grad_m / safe_u1, 0.0))
            dl_du1 = tl.where(reflects, grad_m * s * rho / safe_u1, 0.0)
            positive = mu1 > 0.0
            du1_dmu1 = tl.where(positive, -u1 / (1.0 + tl.where(positive, mu1, 0.0)), -1.0)
            dm_coef = tl.where(positive, 2.0 / (1.0 + tl.where(positive, mu1, 0.0)), 0.0)
            gamma1 = g1 * t + dl_du1 * du1_dmu1
            eps = _f64_like(norm, NORMALIZE_EPS)
            radial = tl.where(norm > eps, mu1 * gamma1 + c_t * grad_m + dl_da * a + dl_du1 * dm_coef * q, 0.0)
            first = (gamma1 - mu1 * radial) / r
            coef_grad = (c_t / r)[:, None]
            coef_noise = (dl_da / (noise_norm * r))[:, None]
            coef_loc = ((dl_du1 * dm_coef - radial) / (r * r))[:, None]
        else:
            first = mu1 * t + s * a
            coef_noise = (s / noise_norm)[:, None]
            coef_loc = (c_t / r)[:, None]
            coef_grad = coef_loc  # not read in the forward
        out_type = out.dtype.element_ty
        tl.store(out_row, _store_type(first, out_type), mask=row_ok)
        if ONE_BLOCK:
            value = _combination(lt, z, g, coef_loc, coef_noise, coef_grad, BACKWARD)
            tl.store(out_row[:, None] + 1 + cols[None, :], _store_type(value, out_type), mask=mask)
        else:
            for start in range(0, tail, BLOCK_D):
                c = start + cols
                lt, z, g, mask = _load_tail(loc_row, noise_row, g_row, row_ok, c, tail, BACKWARD, row, key, offset_lo,
                                              offset_hi, SEEDED)
                value = _combination(lt, z, g, coef_loc, coef_noise, coef_grad, BACKWARD)
                tl.store(out_row[:, None] + 1 + c[None, :], _store_type(value, out_type), mask=mask)


# ================================================================ launchers
ONE_BLOCK_MAX_D = 4096
"""Rows whose tail fits this many elements stay in registers between the sums and the write."""


def launch_config(dim: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_D, num_warps) for rows of ``dim`` (a tail of D - 1 elements): 8 warps, whole
    tails up to ONE_BLOCK_MAX_D in one block with short rows packed to ~1024 elements a program
    (at most 256 rows), longer rows swept in 2048-element chunks. Measured for sm_90 with triton's
    ptxas (tests/test_sampling_transform.py compiles the launches for sm_80 and sm_90 and checks that
    nothing spills): the backward holds about twenty float64 scalars per row in every thread of the
    row's slice, and triton_ops.row_config's packing (D = 128: 16 rows on 8 warps, two rows a
    thread) spilled (255 registers + 488 bytes of stack); this table peaks at 208 registers (D = 128)
    and 120 at D = 2048."""
    whole = 1 << max(0, dim - 2).bit_length()  # the next power of two >= D - 1
    if whole <= ONE_BLOCK_MAX_D:
        return max(1, min(256, 1024 // whole)), whole, 8
    return 1, 2048, 8


def _launch(backward: bool, seeded: bool, rows: int, dim: int, *args) -> None:
    block_r, block_d, num_warps = launch_config(dim)
    kernel = sphere_transform_kernel
    wrapped = triton_ops.wrap_triton(kernel) if triton_ops.wrap_triton is not None else kernel
    wrapped[(triton.cdiv(rows, block_r),)](
        *args, rows, dim, BACKWARD=backward, SEEDED=seeded, BLOCK_R=block_r, BLOCK_D=block_d,
        ONE_BLOCK=block_d >= dim - 1, num_warps=num_warps,
    )


def _forward(loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor, noise: torch.Tensor | None,
             seed: torch.Tensor | None) -> torch.Tensor:
    """x (N, D) from the noise tensor, or (noise None) from the noise drawn under seed."""
    triton_ops._check_device(loc, "loc")
    loc = triton_ops._unit_inner_stride(loc)
    noise = loc if noise is None else triton_ops._unit_inner_stride(noise)  # seeded: unread
    rows, dim = loc.shape
    x = torch.empty((rows, dim), dtype=loc.dtype, device=loc.device)
    if rows > 0:
        # the forward neither reads grad_x nor writes grad_t, grad_s: loc and x stand in for them (x, the
        # output, so that an analysis of which arguments the kernel writes never names an input)
        _launch(False, seed is not None, rows, dim, loc, loc, t, s, noise, x, x, x, loc if seed is None else seed,
                0, loc.stride(0), noise.stride(0), t.stride(0), s.stride(0))
    return x


def _backward(grad_x: torch.Tensor, loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor, noise: torch.Tensor | None,
              seed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    triton_ops._check_device(loc, "loc")
    grad_x = triton_ops._unit_inner_stride(grad_x)
    loc = triton_ops._unit_inner_stride(loc)
    noise = loc if noise is None else triton_ops._unit_inner_stride(noise)
    rows, dim = loc.shape
    grad_loc = torch.empty((rows, dim), dtype=loc.dtype, device=loc.device)
    grad_t = torch.empty((rows,), dtype=torch.float64, device=loc.device)
    grad_s = torch.empty((rows,), dtype=torch.float64, device=loc.device)
    if rows > 0:
        _launch(True, seed is not None, rows, dim, grad_x, loc, t, s, noise, grad_loc, grad_t, grad_s,
                loc if seed is None else seed,
                grad_x.stride(0), loc.stride(0), noise.stride(0), t.stride(0), s.stride(0))
    return grad_loc, grad_t, grad_s


def sphere_transform_forward(loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """loc (N, D); t, s (N,) float64; noise (N, D-1) in loc's dtype -> x (N, D) in loc's dtype."""
    _sampling_ops.check_transform_inputs(loc, t, s, noise)
    return _forward(loc, t, s, noise, None)


def sphere_transform_backward(grad_x: torch.Tensor, loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                              noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_x (N, D) -> grad_loc (N, D) in loc's dtype, grad_t, grad_s (N,) float64."""
    _sampling_ops.check_transform_inputs(loc, t, s, noise, grad_x)
    return _backward(grad_x, loc, t, s, noise, None)


def seeded_forward(loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """The same with the noise drawn in the kernel under seed (2,) int64 (key, offset) on loc's device."""
    _sampling_ops.check_seeded_inputs(loc, t, s, seed)
    return _forward(loc, t, s, None, seed)


def seeded_backward(grad_x: torch.Tensor, loc: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                                  seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _sampling_ops.check_seeded_inputs(loc, t, s, seed, grad_x)
    return _backward(grad_x, loc, t, s, None, seed)


# ================================================================ op registration
Tensor = torch.Tensor  # annotations for torch releases whose triton_op infers the schema


def _sphere_sample_transform(loc: Tensor, t: Tensor, s: Tensor, noise: Tensor) -> Tensor:
    return sphere_transform_forward(loc, t, s, noise)


def _sphere_sample_transform_backward(grad_x: Tensor, loc: Tensor, t: Tensor, s: Tensor,
                                      noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return sphere_transform_backward(grad_x, loc, t, s, noise)


def _sphere_sample_seeded(loc: Tensor, t: Tensor, s: Tensor, seed: Tensor) -> Tensor:
    return seeded_forward(loc, t, s, seed)


def _sphere_sample_seeded_backward(grad_x: Tensor, loc: Tensor, t: Tensor, s: Tensor,
                                   seed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return seeded_backward(grad_x, loc, t, s, seed)


if _IMPORT_ERROR is None:
    sphere_sample_transform = triton_ops._define(
        "sphere_sample_transform", _sampling_ops.FORWARD_SCHEMA, _sphere_sample_transform)
    sphere_sample_transform_backward = triton_ops._define(
        "sphere_sample_transform_backward", _sampling_ops.BACKWARD_SCHEMA, _sphere_sample_transform_backward)
    sphere_sample_seeded = triton_ops._define(
        "sphere_sample_seeded", _sampling_ops.SEEDED_SCHEMA, _sphere_sample_seeded)
    sphere_sample_seeded_backward = triton_ops._define(
        "sphere_sample_seeded_backward", _sampling_ops.SEEDED_BACKWARD_SCHEMA, _sphere_sample_seeded_backward)


def load() -> None:
    """Make the ops usable (autograd registered once), or raise saying why they cannot run here."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"the Triton backend needs the triton package: {_IMPORT_ERROR!r}")
    triton_ops.load()
    _sampling_ops.register_transform_autograd(NAMESPACE)
