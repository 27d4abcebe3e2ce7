"""A compiled CPU kernel for the elementwise part of one LSTM step's backward.

One call replaces the ~14 small tensor ops (each a dispatch of a few microseconds on
tensors of C * B * H values) that the backward of :class:`~fedbench.sim.models.stacked.
_Recurrence` would otherwise run at every step; the GEMMs stay with torch. It takes the
whole sequence's arrays and the step, so the caller converts them to numpy once a call,
not once a step (seven conversions a step cost about as much as the kernel).
"""

from __future__ import annotations

import numba as nb

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}


@nb.njit(**_OPTS)
def step_backward(acts, tanh_c, cells, d_out, dh_in, dc, dgates, t):
    """Step ``t`` back through ``c = f c_prev + i z``, ``h = o tanh(c)``.

    Arrays of the whole sequence, (T, rows, ...): acts (4H: sigmoid i, sigmoid f, tanh z,
    sigmoid o), tanh_c and cells (H; ``c_prev`` is ``cells[t - 1]``, zero at t = 0),
    d_out (dL/dh_t from above), dgates (4H; step t's row gets dL/d(pre-activation
    gates)); and (rows, H): dh_in (from step t+1) and dc (dL/dc_t from step t+1,
    replaced by dL/dc_{t-1}).
    """
    a_t, tc_t, do_t, g_t = acts[t], tanh_c[t], d_out[t], dgates[t]
    c_prev = cells[t - 1] if t > 0 else cells[0]
    has_prev = t > 0
    rows, h = tc_t.shape
    for r in range(rows):
        a, g = a_t[r], g_t[r]
        for k in range(h):
            i, f, z, o = a[k], a[h + k], a[2 * h + k], a[3 * h + k]
            tc = tc_t[r, k]
            dh = do_t[r, k] + dh_in[r, k]
            dcv = dc[r, k] + dh * o * (1 - tc * tc)
            g[k] = dcv * z * (i * (1 - i))
            g[h + k] = dcv * c_prev[r, k] * (f * (1 - f)) if has_prev else 0.0
            g[2 * h + k] = dcv * i * (1 - z * z)
            g[3 * h + k] = dh * tc * (o * (1 - o))
            dc[r, k] = dcv * f
