/* Normalization kernels (compiled after pool.c, one translation unit: see cpu_c.py). */

/* ---- batch norm over channels-last rows (R, C) ---------------------------------------------- */
typedef struct {
  const float *x, *dy, *mean, *rstd, *scale, *shift, *mdb, *mdw;
  float *y;
  double *parts;  /* per part: 2 C partial sums, `stride` doubles apart */
  ll C, stride;
} bn_args;

/* Runs `task` (each part accumulating 2 C float64 sums into its own cache lines of a scratch
   buffer) over the R rows and adds the parts in order into s and q (C each); 0 on success */
static int bn_sums(task_fn task, bn_args *a, ll R, int parts, double *s, double *q) {
  const ll C = a->C;
  if (parts > pool.threads) parts = pool.threads;
  if (parts < 1) parts = 1;
  a->stride = (2 * C + 7) / 8 * 8 + 8;
  a->parts = aligned_alloc(64, (size_t)parts * a->stride * sizeof(double));
  if (!a->parts) return -1;
  const int ran = par_run(task, a, R, parts);
  for (ll c = 0; c < C; ++c) {
    s[c] = q[c] = 0.0;
    for (int k = 0; k < ran; ++k) {
      s[c] += a->parts[k * a->stride + c];
      q[c] += a->parts[k * a->stride + C + c];
    }
  }
  free(a->parts);
  return 0;
}

/* sums of (x - k) and (x - k)^2 per channel, k = the first row (a shift that keeps the
   variance accurate when |mean| >> std), in float64 */
static void bn_stats_task(const void *p, ll r0, ll r1, int part) {
  const bn_args *a = p;
  const ll C = a->C;
  double *restrict s = a->parts + part * a->stride, *restrict q = s + C;
  for (ll c = 0; c < C; ++c) s[c] = q[c] = 0.0;
  const float *k = a->x;
  for (ll r = r0; r < r1; ++r) {
    const float *xr = a->x + r * C;
    for (ll c = 0; c < C; ++c) {
      const double t = (double)xr[c] - (double)k[c];
      s[c] += t;
      q[c] += t * t;
    }
  }
}

/* mean and biased variance (float64) of each channel of x (R, C); 0 on success */
static int bn_stats(const float *x, ll R, ll C, double *mean, double *var, int parts) {
  bn_args a = {.x = x, .C = C};
  if (bn_sums(bn_stats_task, &a, R, parts, mean, var)) return -1;
  for (ll c = 0; c < C; ++c) { /* from the shifted sums */
    const double m = mean[c] / R;
    mean[c] = m + x[c];
    var[c] = var[c] / R - m * m;
    if (var[c] < 0.0) var[c] = 0.0;
  }
  return 0;
}

static void bn_apply_task(const void *p, ll r0, ll r1, int part) {
  const bn_args *a = p;
  const ll C = a->C;
  (void)part;
  for (ll r = r0; r < r1; ++r) {
    const float *xr = a->x + r * C;
    float *yr = a->y + r * C;
    for (ll c = 0; c < C; ++c) yr[c] = (xr[c] - a->mean[c]) * a->scale[c] + a->shift[c];
  }
}

/* y = (x - mean) * scale + shift, per channel of the rows of x (R, C) */
static void bn_apply(const float *x, float *y, ll R, ll C, const float *mean,
                     const float *scale, const float *shift, int parts) {
  bn_args a = {.x = x, .y = y, .mean = mean, .scale = scale, .shift = shift, .C = C};
  par_run(bn_apply_task, &a, R, parts);
}

static void bn_bwd_sums_task(const void *p, ll r0, ll r1, int part) {
  const bn_args *a = p;
  const ll C = a->C;
  double *restrict s = a->parts + part * a->stride, *restrict q = s + C;
  for (ll c = 0; c < C; ++c) s[c] = q[c] = 0.0;
  for (ll r = r0; r < r1; ++r) {
    const float *g = a->dy + r * C, *xr = a->x + r * C;
    for (ll c = 0; c < C; ++c) {
      s[c] += g[c];
      q[c] += (double)g[c] * ((xr[c] - a->mean[c]) * a->rstd[c]);
    }
  }
}

/* db = sum dy and dw = sum dy * (x - mean) * rstd over the rows, per channel (float64);
   0 on success */
static int bn_bwd_sums(const float *dy, const float *x, ll R, ll C, const float *mean,
                       const float *rstd, double *db, double *dw, int parts) {
  bn_args a = {.x = x, .dy = dy, .mean = mean, .rstd = rstd, .C = C};
  return bn_sums(bn_bwd_sums_task, &a, R, parts, db, dw);
}

static void bn_bwd_dx_task(const void *p, ll r0, ll r1, int part) {
  const bn_args *a = p;
  const ll C = a->C;
  (void)part;
  for (ll r = r0; r < r1; ++r) {
    const float *g = a->dy + r * C, *xr = a->x + r * C;
    float *o = a->y + r * C;
    for (ll c = 0; c < C; ++c) {
      const float xh = (xr[c] - a->mean[c]) * a->rstd[c];
      o[c] = a->scale[c] * (g[c] - a->mdb[c] - xh * a->mdw[c]);
    }
  }
}

/* dx = scale * (dy - mdb - xh * mdw), xh = (x - mean) * rstd, per channel of the rows */
static void bn_bwd_dx(const float *dy, const float *x, float *dx, ll R, ll C,
                      const float *mean, const float *rstd, const float *scale,
                      const float *mdb, const float *mdw, int parts) {
  bn_args a = {.x = x, .dy = dy, .y = dx, .mean = mean, .rstd = rstd, .scale = scale,
               .mdb = mdb, .mdw = mdw, .C = C};
  par_run(bn_bwd_dx_task, &a, R, parts);
}


/* ---- layer norm over the last axis: rows (R, D) ---------------------------------------------- */
typedef struct {
  const float *x, *dy, *w, *b, *mean, *rstd;
  float *y, *mean_out, *rstd_out, *parts; /* parts: per part dw, db (2 D), 64-byte apart */
  ll D, stride;
  float eps;
} ln_args;

static void ln_fwd_task(const void *p, ll r0, ll r1, int part) {
  const ln_args *a = p;
  const ll D = a->D;
  (void)part;
  for (ll r = r0; r < r1; ++r) {
    const float *x = a->x + r * D;
    float *y = a->y + r * D;
    const float mean = lanes_sum(x, D) / (float)D;
    for (ll d = 0; d < D; ++d) y[d] = x[d] - mean; /* y holds x - mean until the end */
    const float rstd = 1.0f / sqrtf(lanes_dot(y, y, D) / (float)D + a->eps);
    a->mean_out[r] = mean;
    a->rstd_out[r] = rstd;
    if (a->w && a->b) {
      for (ll d = 0; d < D; ++d) y[d] = y[d] * rstd * a->w[d] + a->b[d];
    } else if (a->w) {
      for (ll d = 0; d < D; ++d) y[d] = y[d] * rstd * a->w[d];
    } else {
      for (ll d = 0; d < D; ++d) y[d] *= rstd;
    }
  }
}

/* y = (x - mean) rstd w + b over each row of x (R, D) (w, b (D,) or NULL), with the rows'
   mean and rstd = 1 / sqrt(var + eps) (sums in 16 lanes) */
void layer_norm_fwd(const float *x, const float *w, const float *b, float *y, float *mean,
                    float *rstd, ll R, ll D, float eps, int parts) {
  ln_args a = {.x = x, .w = w, .b = b, .y = y, .mean_out = mean, .rstd_out = rstd, .D = D,
               .eps = eps};
  par_run(ln_fwd_task, &a, R, parts);
}

static void ln_bwd_task(const void *p, ll r0, ll r1, int part) {
  const ln_args *a = p;
  const ll D = a->D;
  float *dw = a->w ? a->parts + part * a->stride : NULL, *db = dw ? dw + D : NULL;
  if (dw) memset(dw, 0, 2 * D * sizeof(float));
  for (ll r = r0; r < r1; ++r) {
    const float *x = a->x + r * D, *g = a->dy + r * D;
    float *o = a->y + r * D;
    const float mean = a->mean[r], rstd = a->rstd[r];
    /* o holds xh = (x - mean) rstd, then dx; gw = g w */
    for (ll d = 0; d < D; ++d) o[d] = (x[d] - mean) * rstd;
    float c1, c2;
    if (a->w) {
      float acc1[16] = {0}, acc2[16] = {0};
      ll d = 0;
      for (; d + 16 <= D; d += 16)
        for (int j = 0; j < 16; ++j) {
          const float gw = g[d + j] * a->w[d + j];
          acc1[j] += gw;
          acc2[j] += gw * o[d + j];
        }
      c1 = c2 = 0.0f;
      for (int j = 0; j < 16; ++j) {
        c1 += acc1[j];
        c2 += acc2[j];
      }
      for (; d < D; ++d) {
        c1 += g[d] * a->w[d];
        c2 += g[d] * a->w[d] * o[d];
      }
      for (ll e = 0; e < D; ++e) {
        dw[e] += g[e] * o[e];
        db[e] += g[e];
      }
    } else {
      c1 = lanes_sum(g, D);
      c2 = lanes_dot(g, o, D);
    }
    c1 /= (float)D;
    c2 /= (float)D;
    if (a->w) {
      for (ll d = 0; d < D; ++d) o[d] = rstd * (g[d] * a->w[d] - c1 - o[d] * c2);
    } else {
      for (ll d = 0; d < D; ++d) o[d] = rstd * (g[d] - c1 - o[d] * c2);
    }
  }
}

/* dx (R, D) of layer_norm_fwd for dy, and (w given) dw, db (D,) summed over the rows; 0 on
   success */
int layer_norm_bwd(const float *dy, const float *x, const float *mean, const float *rstd,
                   const float *w, float *dx, float *dw, float *db, ll R, ll D, int parts) {
  if (parts > pool.threads) parts = pool.threads;
  if (parts < 1) parts = 1;
  const ll stride = (2 * D + 15) / 16 * 16 + 16;
  float *buf = w ? aligned_alloc(64, (size_t)parts * stride * sizeof(float)) : NULL;
  if (w && !buf) return -1;
  ln_args a = {.x = x, .dy = dy, .w = w, .mean = mean, .rstd = rstd, .y = dx, .parts = buf,
               .D = D, .stride = stride};
  const int ran = par_run(ln_bwd_task, &a, R, parts);
  if (w) {
    for (ll d = 0; d < D; ++d) {
      float s = 0.0f, t = 0.0f;
      for (int k = 0; k < ran; ++k) {
        s += buf[k * stride + d];
        t += buf[k * stride + D + d];
      }
      dw[d] = s;
      db[d] = t;
    }
    free(buf);
  }
  return 0;
}

/* ---- batch norm, whole: statistics, then the rows, in one call ------------------------------- */
/* y = (x - mean) rstd w + b over the rows of x (R, C) (w, b (C,) or NULL), with the channels'
   mean, rstd = 1 / sqrt(var + eps) and biased var written as float32; 0 on success */
int bn_forward(const float *x, const float *w, const float *b, float eps, float *y,
               float *mean, float *rstd, float *var, ll R, ll C, int parts) {
  double *m64 = malloc(2 * C * sizeof(double));
  float *scale = malloc(2 * C * sizeof(float));
  if (!m64 || !scale || bn_stats(x, R, C, m64, m64 + C, parts)) {
    free(m64);
    free(scale);
    return -1;
  }
  float *shift = scale + C;
  for (ll c = 0; c < C; ++c) {
    mean[c] = (float)m64[c];
    var[c] = (float)m64[C + c];
    rstd[c] = (float)(1.0 / sqrt(m64[C + c] + eps));
    scale[c] = w ? rstd[c] * w[c] : rstd[c];
    shift[c] = b ? b[c] : 0.0f;
  }
  bn_apply(x, y, R, C, mean, scale, shift, parts);
  free(m64);
  free(scale);
  return 0;
}

/* dx of bn_forward for dy (R, C), and (w given) dw, db (C,); 0 on success */
int bn_backward(const float *dy, const float *x, const float *mean, const float *rstd,
                const float *w, float *dx, float *dw, float *db, ll R, ll C, int parts) {
  double *s64 = malloc(2 * C * sizeof(double));
  float *f = malloc(3 * C * sizeof(float));
  if (!s64 || !f || bn_bwd_sums(dy, x, R, C, mean, rstd, s64, s64 + C, parts)) {
    free(s64);
    free(f);
    return -1;
  }
  float *scale = f, *mdb = f + C, *mdw = f + 2 * C;
  for (ll c = 0; c < C; ++c) {
    const float dbc = (float)s64[c], dwc = (float)s64[C + c];
    if (dw) {
      db[c] = dbc;
      dw[c] = dwc;
    }
    scale[c] = w ? rstd[c] * w[c] : rstd[c];
    mdb[c] = dbc / (float)R;
    mdw[c] = dwc / (float)R;
  }
  bn_bwd_dx(dy, x, dx, R, C, mean, rstd, scale, mdb, mdw, parts);
  free(s64);
  free(f);
  return 0;
}
