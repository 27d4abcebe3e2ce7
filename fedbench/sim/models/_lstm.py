"""A compiled CPU kernel for the elementwise part of one LSTM step's backward.

One call replaces the ~14 small tensor ops (each a dispatch of a few microseconds on
tensors of C * B * H values) that the backward of :class:`~fedbench.sim.models.stacked.
_Recurrence` would otherwise run at every step; the GEMMs stay with torch.
"""

from __future__ import annotations

import numba as nb

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}


@nb.njit(**_OPTS)
def step_backward(acts, tanh_c, c_prev, has_prev, d_out, dh_in, dc, dgates):
    """One step back through ``c = f c_prev + i z``, ``h = o tanh(c)``.

    Rows r of (rows, ...) arrays: acts (4H: sigmoid i, sigmoid f, tanh z, sigmoid o),
    tanh_c, c_prev (ignored unless ``has_prev``), d_out (dL/dh_t from above) and dh_in
    (from step t+1), all (rows, H) but acts; dc (rows, H) dL/dc_t from step t+1, replaced
    by dL/dc_{t-1}; dgates (rows, 4H) gets dL/d(pre-activation gates).
    """
    rows, h = tanh_c.shape
    for r in range(rows):
        a, g = acts[r], dgates[r]
        for k in range(h):
            i, f, z, o = a[k], a[h + k], a[2 * h + k], a[3 * h + k]
            t = tanh_c[r, k]
            dh = d_out[r, k] + dh_in[r, k]
            dcv = dc[r, k] + dh * o * (1 - t * t)
            g[k] = dcv * z * (i * (1 - i))
            g[h + k] = dcv * c_prev[r, k] * (f * (1 - f)) if has_prev else 0.0
            g[2 * h + k] = dcv * i * (1 - z * z)
            g[3 * h + k] = dh * t * (o * (1 - o))
            dc[r, k] = dcv * f
