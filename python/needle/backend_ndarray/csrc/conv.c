/* Convolution kernels, NHWC with (KH, KW, C_in, C_out) weights (compiled after pool.c, one
   translation unit: see cpu_c.py). */

/* ---- padding ------------------------------------------------------------------------------- */
typedef struct { const float *x; float *out; ll H, W, C, P; } pad_args;

static void pad_task(const void *p, ll lo, ll hi, int part) {
  const pad_args *a = p;
  (void)part;
  const ll H = a->H, W = a->W, C = a->C, P = a->P, WP = W + 2 * P, HP = H + 2 * P;
  for (ll n = lo; n < hi; ++n) {
    float *o = a->out + n * HP * WP * C;
    const float *x = a->x + n * H * W * C;
    memset(o, 0, P * WP * C * sizeof(float));
    for (ll y = 0; y < H; ++y) {
      float *row = o + (P + y) * WP * C;
      memset(row, 0, P * C * sizeof(float));
      memcpy(row + P * C, x + y * W * C, W * C * sizeof(float));
      memset(row + (P + W) * C, 0, P * C * sizeof(float));
    }
    memset(o + (P + H) * WP * C, 0, P * WP * C * sizeof(float));
  }
}

/* out (N, H+2P, W+2P, C) = x (N, H, W, C) zero-padded by P on H and W */
void pad_nhwc(const float *x, float *out, ll N, ll H, ll W, ll C, ll P, int parts) {
  pad_args a = {x, out, H, W, C, P};
  par_run(pad_task, &a, N, parts);
}

/* ---- im2col / col2im ----------------------------------------------------------------------- */
/* src: the images (im2col) or the window values (col2im); dst: the other */
typedef struct { const float *src; float *dst; ll H, W, C, KH, KW, S, P, HO, WO; } win_args;

static void im2col_task(const void *p, ll n0, ll n1, int part) {
  const win_args *a = p;
  (void)part;
  const ll H = a->H, W = a->W, C = a->C, KH = a->KH, KW = a->KW, S = a->S, P = a->P;
  const ll HO = a->HO, WO = a->WO, run = KW * C;
  for (ll n = n0; n < n1; ++n) {
    const float *xn = a->src + n * H * W * C;
    float *dst = a->dst + n * HO * WO * KH * run;
    for (ll ho = 0; ho < HO; ++ho) {
      for (ll wo = 0; wo < WO; ++wo) {
        const ll x0 = wo * S - P;
        for (ll i = 0; i < KH; ++i, dst += run) {
          const ll y = ho * S + i - P;
          if (y < 0 || y >= H) {
            memset(dst, 0, run * sizeof(float));
            continue;
          }
          const float *row = xn + y * W * C;
          if (x0 >= 0 && x0 + KW <= W) {
            memcpy(dst, row + x0 * C, run * sizeof(float));
            continue;
          }
          for (ll j = 0; j < KW; ++j) {
            const ll xx = x0 + j;
            if (xx < 0 || xx >= W) memset(dst + j * C, 0, C * sizeof(float));
            else memcpy(dst + j * C, row + xx * C, C * sizeof(float));
          }
        }
      }
    }
  }
}

/* cols[n, ho, wo, i, j, :] = x[n, ho*s + i - p, wo*s + j - p, :], zero outside.
   x is (N, H, W, C), cols (N, HO, WO, KH, KW, C). */
void im2col(const float *x, float *cols, ll N, ll H, ll W, ll C, ll KH, ll KW, ll S, ll P,
            ll HO, ll WO, int parts) {
  win_args a = {x, cols, H, W, C, KH, KW, S, P, HO, WO};
  par_run(im2col_task, &a, N, parts);
}

static void col2im_task(const void *p, ll n0, ll n1, int part) {
  const win_args *a = p;
  (void)part;
  const ll H = a->H, W = a->W, C = a->C, KH = a->KH, KW = a->KW, S = a->S, P = a->P;
  const ll HO = a->HO, WO = a->WO;
  for (ll n = n0; n < n1; ++n) {
    float *dxn = a->dst + n * H * W * C;
    const float *g = a->src + n * HO * WO * KH * KW * C;
    memset(dxn, 0, H * W * C * sizeof(float));
    for (ll ho = 0; ho < HO; ++ho)
      for (ll wo = 0; wo < WO; ++wo)
        for (ll i = 0; i < KH; ++i) {
          const ll y = ho * S + i - P;
          for (ll j = 0; j < KW; ++j, g += C) {
            const ll xx = wo * S + j - P;
            if (y < 0 || y >= H || xx < 0 || xx >= W) continue;
            float *o = dxn + (y * W + xx) * C;
            for (ll c = 0; c < C; ++c) o[c] += g[c];
          }
        }
  }
}

/* dx (N, H, W, C) = the sum over windows of d (N, HO, WO, KH, KW, C): the adjoint of im2col.
   d is read in memory order, each window added onto dx in turn. */
void col2im(const float *d, float *dx, ll N, ll H, ll W, ll C, ll KH, ll KW, ll S, ll P,
            ll HO, ll WO, int parts) {
  win_args a = {d, dx, H, W, C, KH, KW, S, P, HO, WO};
  par_run(col2im_task, &a, N, parts);
}

/* ---- direct convolution, vectorized over 16 output channels --------------------------------- */
typedef struct {
  const float *x, *w, *bias, *g;
  float *out;
  ll HP, WP, CI, KH, KW, CO, S, HO, WO, total;
} conv_args;

/* PB (<= 8) output pixels x NV (<= 2) * 16 output channels, summed over taps and C_in */
AI void fwd_block(const int pb, const int nv, const float *const *xb, const float *w,
                  const float *bias, float *const *ob, ll CI, ll KH, ll KW, ll WP, ll CO,
                  ll co) {
  v16 acc[8][2];
  for (int p = 0; p < pb; ++p)
    for (int v = 0; v < nv; ++v) acc[p][v] = bias ? ld(bias + co + 16 * v) : (v16){0};
  for (ll i = 0; i < KH; ++i)
    for (ll j = 0; j < KW; ++j) {
      const ll xoff = (i * WP + j) * CI;
      const float *wt = w + (i * KW + j) * CI * CO + co;
      for (ll ci = 0; ci < CI; ++ci) {
        const v16 w0 = ld(wt + ci * CO);
        const v16 w1 = nv > 1 ? ld(wt + ci * CO + 16) : (v16){0};
        for (int p = 0; p < pb; ++p) {
          const float xv = xb[p][xoff + ci];
          acc[p][0] += xv * w0;
          if (nv > 1) acc[p][1] += xv * w1;
        }
      }
    }
  for (int p = 0; p < pb; ++p)
    for (int v = 0; v < nv; ++v) st(ob[p] + co + 16 * v, acc[p][v]);
}

/* output pixels [8 b0, 8 b1) of all images */
static void conv_fwd_task(const void *p, ll b0, ll b1, int part) {
  const conv_args *a = p;
  (void)part;
  const ll HP = a->HP, WP = a->WP, CI = a->CI, KH = a->KH, KW = a->KW, CO = a->CO, S = a->S;
  const ll HO = a->HO, WO = a->WO, per = HO * WO;
  const ll total = a->total; /* N * HO * WO */
  for (ll q0 = 8 * b0; q0 < 8 * b1 && q0 < total; q0 += 8) {
    const int pb = total - q0 < 8 ? (int)(total - q0) : 8;
    const float *xb[8];
    float *ob[8];
    for (int q = 0; q < pb; ++q) {
      const ll k = q0 + q, n = k / per, r = k % per, ho = r / WO, wo = r % WO;
      xb[q] = a->x + ((n * HP + ho * S) * WP + wo * S) * CI;
      ob[q] = a->out + k * CO;
    }
    ll co = 0;
    if (pb == 8) {
      for (; co + 32 <= CO; co += 32) fwd_block(8, 2, xb, a->w, a->bias, ob, CI, KH, KW, WP, CO, co);
      for (; co < CO; co += 16) fwd_block(8, 1, xb, a->w, a->bias, ob, CI, KH, KW, WP, CO, co);
    } else {
      for (int q = 0; q < pb; ++q)
        for (ll c = 0; c < CO; c += 16)
          fwd_block(1, 1, xb + q, a->w, a->bias, ob + q, CI, KH, KW, WP, CO, c);
    }
  }
}

/* out (N, HO, WO, CO) = the correlation of the padded xp (N, HP, WP, CI) with
   w (KH, KW, CI, CO), plus bias (CO,) or NULL; CO % 16 == 0 */
void conv_fwd(const float *xp, const float *w, const float *bias, float *out, ll N, ll HP,
              ll WP, ll CI, ll KH, ll KW, ll CO, ll S, ll HO, ll WO, int parts) {
  const ll total = N * HO * WO;
  conv_args a = {xp, w, bias, NULL, out, HP, WP, CI, KH, KW, CO, S, HO, WO, total};
  par_run(conv_fwd_task, &a, (total + 7) / 8, parts);
}

/* dst[c, :] += sum over the output pixels of image n of xp[window + xoff + ci + c] * g[pixel]
   for c < cb: CB input channels x NV*16 output channels of one tap's weight gradient */
AI void wgt_block(const int cb, const int nv, const float *xp, const float *g, ll n, ll HP,
                  ll WP, ll CI, ll CO, ll S, ll HO, ll WO, ll xoff, ll ci, ll co, float *dst) {
  v16 acc[8][2];
  for (int c = 0; c < cb; ++c)
    for (int v = 0; v < nv; ++v) acc[c][v] = ld(dst + c * CO + 16 * v);
  for (ll ho = 0; ho < HO; ++ho) {
    const float *xr = xp + ((n * HP + ho * S) * WP) * CI + xoff + ci;
    const float *gr = g + ((n * HO + ho) * WO) * CO + co;
    for (ll wo = 0; wo < WO; ++wo) {
      const float *xq = xr + wo * S * CI;
      const v16 g0 = ld(gr + wo * CO);
      const v16 g1 = nv > 1 ? ld(gr + wo * CO + 16) : (v16){0};
      for (int c = 0; c < cb; ++c) {
        acc[c][0] += xq[c] * g0;
        if (nv > 1) acc[c][1] += xq[c] * g1;
      }
    }
  }
  for (int c = 0; c < cb; ++c)
    for (int v = 0; v < nv; ++v) st(dst + c * CO + 16 * v, acc[c][v]);
}

typedef struct {
  conv_args c;
  float *dw;       /* part 0 writes here */
  float *scratch;  /* (parts - 1) weight-sized buffers for the others */
  float *db;       /* the bias gradient (CO,) or NULL */
} wgrad_args;

static void conv_wgrad_task(const void *p, ll n0, ll n1, int part) {
  const wgrad_args *wa = p;
  const conv_args *a = &wa->c;
  const ll HP = a->HP, WP = a->WP, CI = a->CI, KH = a->KH, KW = a->KW, CO = a->CO, S = a->S;
  const ll HO = a->HO, WO = a->WO, size = KH * KW * CI * CO;
  float *dw = part == 0 ? wa->dw : wa->scratch + (part - 1) * (size + CO);
  memset(dw, 0, (size + CO) * sizeof(float)); /* + CO: this part's bias gradient */
  for (ll n = n0; n < n1; ++n) {
    for (ll i = 0; i < KH; ++i)
      for (ll j = 0; j < KW; ++j) {
        const ll xoff = (i * WP + j) * CI;
        float *dt = dw + (i * KW + j) * CI * CO;
        for (ll co = 0; co < CO;) {
          const int nv = CO - co >= 32 ? 2 : 1;
          ll ci = 0;
          for (; ci + 8 <= CI; ci += 8) {
            float *dst = dt + ci * CO + co;
            if (nv == 2) wgt_block(8, 2, a->x, a->g, n, HP, WP, CI, CO, S, HO, WO, xoff, ci, co, dst);
            else wgt_block(8, 1, a->x, a->g, n, HP, WP, CI, CO, S, HO, WO, xoff, ci, co, dst);
          }
          for (; ci < CI; ++ci) {
            float *dst = dt + ci * CO + co;
            if (nv == 2) wgt_block(1, 2, a->x, a->g, n, HP, WP, CI, CO, S, HO, WO, xoff, ci, co, dst);
            else wgt_block(1, 1, a->x, a->g, n, HP, WP, CI, CO, S, HO, WO, xoff, ci, co, dst);
          }
          co += 16 * nv;
        }
      }
    if (wa->db) {
      float *db = dw + size;
      const float *gn = a->g + n * HO * WO * CO;
      for (ll q = 0; q < HO * WO; ++q)
        for (ll c = 0; c < CO; c += 16) st(db + c, ld(db + c) + ld(gn + q * CO + c));
    }
  }
}

/* dw (KH, KW, CI, CO) = the weight gradient of conv_fwd for g (N, HO, WO, CO), and db (CO,)
   (the sum of g over pixels) when db is not NULL. dw must have room for KH*KW*CI*CO + CO
   floats. One image at a time, so its input and output gradient stay in cache across the
   taps; each thread sums its images, the parts are added in order. CO % 16 == 0 */
void conv_wgrad(const float *xp, const float *g, float *dw, float *db, ll N, ll HP, ll WP,
                ll CI, ll KH, ll KW, ll CO, ll S, ll HO, ll WO, int parts) {
  const ll size = KH * KW * CI * CO;
  if (parts > pool.threads) parts = pool.threads;
  if (parts > N) parts = (int)N;
  if (parts < 1) parts = 1;
  float *scratch = parts > 1 ? malloc((size_t)(parts - 1) * (size + CO) * sizeof(float)) : NULL;
  if (parts > 1 && !scratch) parts = 1;
  wgrad_args a = {{xp, NULL, NULL, g, NULL, HP, WP, CI, KH, KW, CO, S, HO, WO, 0}, dw, scratch,
                  db};
  const int ran = par_run(conv_wgrad_task, &a, N, parts);
  for (int k = 1; k < ran; ++k) {
    const float *s = scratch + (k - 1) * (size + CO);
    for (ll i = 0; i < size + CO; ++i) dw[i] += s[i];
  }
  if (db) memcpy(db, dw + size, CO * sizeof(float));
  free(scratch);
}

/* For PB output pixels: each tap's window of dxp += wt[tap] (CO, CI) applied to the pixel's
   g row, for NV*16 input channels from ci */
AI void dgrad_block(const int pb, const int nv, const float *const *gb, const float *wt,
                    float *const *db, ll CI, ll CO, ll KH, ll KW, ll WP, ll ci) {
  for (ll i = 0; i < KH; ++i)
    for (ll j = 0; j < KW; ++j) {
      v16 acc[8][2];
      for (int p = 0; p < pb; ++p)
        for (int v = 0; v < nv; ++v) acc[p][v] = (v16){0};
      const float *wp = wt + (i * KW + j) * CO * CI + ci;
      for (ll co = 0; co < CO; ++co) {
        const v16 w0 = ld(wp + co * CI);
        const v16 w1 = nv > 1 ? ld(wp + co * CI + 16) : (v16){0};
        for (int p = 0; p < pb; ++p) {
          const float gv = gb[p][co];
          acc[p][0] += gv * w0;
          if (nv > 1) acc[p][1] += gv * w1;
        }
      }
      const ll off = (i * WP + j) * CI + ci;
      for (int p = 0; p < pb; ++p)
        for (int v = 0; v < nv; ++v) {
          float *d = db[p] + off + 16 * v;
          st(d, ld(d) + acc[p][v]);
        }
    }
}

typedef struct {
  conv_args c;
  ll H, W, P;
  float *pad;  /* one padded image per part: (parts, HP, WP, CI) */
} dgrad_args;

static void conv_dgrad_task(const void *p, ll n0, ll n1, int part) {
  const dgrad_args *da = p;
  const conv_args *a = &da->c;
  const ll HP = a->HP, WP = a->WP, CI = a->CI, KH = a->KH, KW = a->KW, CO = a->CO, S = a->S;
  const ll HO = a->HO, WO = a->WO, per = HO * WO, H = da->H, W = da->W, P = da->P;
  float *pad = da->pad + part * HP * WP * CI;
  for (ll n = n0; n < n1; ++n) {
    memset(pad, 0, HP * WP * CI * sizeof(float));
    for (ll q0 = 0; q0 < per; q0 += 8) {
      const int pb = per - q0 < 8 ? (int)(per - q0) : 8;
      const float *gb[8];
      float *db[8];
      for (int q = 0; q < pb; ++q) {
        const ll r = q0 + q, ho = r / WO, wo = r % WO;
        gb[q] = a->g + (n * per + r) * CO;
        db[q] = pad + (ho * S * WP + wo * S) * CI;
      }
      ll ci = 0;
      if (pb == 8) {
        for (; ci + 32 <= CI; ci += 32) dgrad_block(8, 2, gb, a->w, db, CI, CO, KH, KW, WP, ci);
        for (; ci < CI; ci += 16) dgrad_block(8, 1, gb, a->w, db, CI, CO, KH, KW, WP, ci);
      } else {
        for (int q = 0; q < pb; ++q)
          for (ll c = 0; c < CI; c += 16) dgrad_block(1, 1, gb + q, a->w, db + q, CI, CO, KH, KW, WP, c);
      }
    }
    float *o = a->out + n * H * W * CI;
    for (ll y = 0; y < H; ++y)
      memcpy(o + y * W * CI, pad + ((y + P) * WP + P) * CI, W * CI * sizeof(float));
  }
}

/* dx (N, H, W, CI) = the adjoint of conv_fwd (padding P) applied to g (N, HO, WO, CO), with
   wt (KH, KW, CO, CI) (the weight, its last two axes swapped). Each image is summed into a
   padded buffer that stays in cache and then cropped into dx. CI % 16 == 0; 0 on success,
   -1 when the padded buffers cannot be allocated */
int conv_dgrad(const float *g, const float *wt, float *dx, ll N, ll H, ll W, ll P, ll CI,
                ll KH, ll KW, ll CO, ll S, ll HO, ll WO, int parts) {
  const ll HP = H + 2 * P, WP = W + 2 * P;  /* P: the padding (the pool is `pool`) */
  if (parts > pool.threads) parts = pool.threads;
  if (parts > N) parts = (int)N;
  if (parts < 1) parts = 1;
  float *pad = malloc((size_t)parts * HP * WP * CI * sizeof(float));
  if (!pad) return -1;
  dgrad_args a = {{NULL, wt, NULL, g, dx, HP, WP, CI, KH, KW, CO, S, HO, WO, 0}, H, W, P, pad};
  par_run(conv_dgrad_task, &a, N, parts);
  free(pad);
  return 0;
}

/* ---- the input gradient of a convolution with few input channels (C_in < 16) ---------------- */
/* dx[n, y, x, ci] = sum over the taps (i, j) whose output pixel (ho, wo) exists of
   dot(g[n, ho, wo, :], w[i, j, ci, :]); vectorized over CO (CO % 16 == 0) */
static void conv_dgrad_small_task(const void *p, ll n0, ll n1, int part) {
  const dgrad_args *da = p;
  const conv_args *a = &da->c;
  const ll CI = a->CI, KH = a->KH, KW = a->KW, CO = a->CO, S = a->S, HO = a->HO, WO = a->WO;
  const ll H = da->H, W = da->W, P = da->P;
  (void)part;
  for (ll n = n0; n < n1; ++n)
    for (ll y = 0; y < H; ++y)
      for (ll x = 0; x < W; ++x) {
        float *o = a->out + ((n * H + y) * W + x) * CI;
        for (ll ci = 0; ci < CI; ++ci) {
          v16 acc = {0};
          for (ll i = 0; i < KH; ++i) {
            const ll t = y + P - i;
            if (t < 0 || t % S) continue;
            const ll ho = t / S;
            if (ho >= HO) continue;
            for (ll j = 0; j < KW; ++j) {
              const ll u = x + P - j;
              if (u < 0 || u % S) continue;
              const ll wo = u / S;
              if (wo >= WO) continue;
              const float *gr = a->g + ((n * HO + ho) * WO + wo) * CO;
              const float *wr = a->w + ((i * KW + j) * CI + ci) * CO;
              for (ll c = 0; c < CO; c += 16) acc += ld(gr + c) * ld(wr + c);
            }
          }
          float s = 0.0f;
          for (int k = 0; k < 16; ++k) s += acc[k];
          o[ci] = s;
        }
      }
}

/* dx (N, H, W, CI) as conv_dgrad, for any CI, from w (KH, KW, CI, CO) itself; CO % 16 == 0 */
void conv_dgrad_small(const float *g, const float *w, float *dx, ll N, ll H, ll W, ll P,
                      ll CI, ll KH, ll KW, ll CO, ll S, ll HO, ll WO, int parts) {
  dgrad_args a = {{NULL, w, NULL, g, dx, H + 2 * P, W + 2 * P, CI, KH, KW, CO, S, HO, WO, 0},
                  H, W, P, NULL};
  par_run(conv_dgrad_small_task, &a, N, parts);
}


/* ---- max pooling (logical NCHW, any strides) ------------------------------------------------ */
/* Strides are in elements, in the order (n, c, h, w). The chosen index of a window is the
   logical flat index n*C*H*W + c*H*W + h*W + w of its first maximum (row-major over the
   window, NaN counted as the maximum); padding is never chosen. */
typedef struct {
  const float *x; float *out; long long *idx;
  ll C, H, W, K, S, P, HO, WO;
  ll xs[4], os[4];
} maxpool_args;

static void maxpool_task(const void *p, ll r0, ll r1, int part) {
  const maxpool_args *a = p;
  (void)part;
  const ll C = a->C, H = a->H, W = a->W, K = a->K, S = a->S, P = a->P, WO = a->WO;
  const ll xc = a->xs[1], oc = a->os[1];
  float best[64];
  ll arg[64];
  for (ll r = r0; r < r1; ++r) { /* r = n * HO + ho */
    const ll n = r / a->HO, ho = r % a->HO;
    const ll i0 = ho * S - P < 0 ? 0 : ho * S - P;
    const ll i1 = ho * S - P + K > H ? H : ho * S - P + K;
    for (ll wo = 0; wo < WO; ++wo) {
      const ll j0 = wo * S - P < 0 ? 0 : wo * S - P;
      const ll j1 = wo * S - P + K > W ? W : wo * S - P + K;
      for (ll c0 = 0; c0 < C; c0 += 64) {
        const ll cn = C - c0 < 64 ? C - c0 : 64;
        const float *xb = a->x + n * a->xs[0] + c0 * xc;
        for (ll c = 0; c < cn; ++c) {
          best[c] = xb[c * xc + i0 * a->xs[2] + j0 * a->xs[3]];
          arg[c] = i0 * W + j0;
        }
        for (ll i = i0; i < i1; ++i)
          for (ll j = j0; j < j1; ++j) {
            const float *xr = xb + i * a->xs[2] + j * a->xs[3];
            const ll at = i * W + j;
            for (ll c = 0; c < cn; ++c) {
              const float v = xr[c * xc];
              const int take = v > best[c] || (v != v && best[c] == best[c]);
              best[c] = take ? v : best[c];
              arg[c] = take ? at : arg[c];
            }
          }
        const ll o = n * a->os[0] + ho * a->os[2] + wo * a->os[3] + c0 * oc;
        const ll base = (n * C + c0) * H * W;
        for (ll c = 0; c < cn; ++c) {
          a->out[o + c * oc] = best[c];
          a->idx[o + c * oc] = base + c * H * W + arg[c];
        }
      }
    }
  }
}

/* out and idx (N, C, HO, WO), both with strides os, = the max and its index over K x K
   windows (stride S, padding P) of x (N, C, H, W) with strides xs; needs P < K */
void max_pool2d(const float *x, float *out, long long *idx, const ll *shape, const ll *xs,
                const ll *os, ll K, ll S, ll P, ll HO, ll WO, int parts) {
  maxpool_args a = {x, out, idx, shape[1], shape[2], shape[3], K, S, P, HO, WO,
                    {xs[0], xs[1], xs[2], xs[3]}, {os[0], os[1], os[2], os[3]}};
  par_run(maxpool_task, &a, shape[0] * HO, parts);
}

/* floor(l / d) for 0 <= l < 2^52 through a float64 reciprocal (a division costs ~15 cycles) */
static inline ll div_by(ll l, ll d, double inv) {
  ll q = (ll)((double)l * inv);
  if (q * d > l) --q;
  else if ((q + 1) * d <= l) ++q;
  return q;
}

typedef struct {
  const float *g; const long long *idx; float *dx;
  ll per, C, H, W, size, ds[4];
  double iw, ih, ichw;
  int own;     /* add only the elements aimed at their own batch row */
  int *flags;  /* per part: 1 skipped an element aimed at another row, 2 a bad index */
} flat_scatter_args;

static inline void flat_scatter_one(const flat_scatter_args *a, ll l, ll b, float v) {
  const ll r = div_by(l, a->W, a->iw), w = l - r * a->W;
  const ll q = div_by(r, a->H, a->ih), h = r - q * a->H;
  a->dx[b * a->ds[0] + (q - b * a->C) * a->ds[1] + h * a->ds[2] + w * a->ds[3]] += v;
}

/* batch rows [lo, hi) of g (per elements each, in memory order): with `own`, only the
   elements whose index falls in their own batch row of dx (parts then write disjoint
   elements), the others flagged for the serial pass */
static void flat_scatter_task(const void *p, ll lo, ll hi, int part) {
  const flat_scatter_args *a = p;
  const ll CHW = a->C * a->H * a->W;
  if (a->own) memset(a->dx + lo * a->ds[0], 0, (hi - lo) * a->ds[0] * sizeof(float));
  for (ll row = lo; row < hi; ++row)
    for (ll k = row * a->per; k < (row + 1) * a->per; ++k) {
      const ll l = a->idx[k];
      if (l < 0 || l >= a->size) {
        a->flags[part] |= 2;
        return;
      }
      const ll b = div_by(l, CHW, a->ichw);
      if (a->own && b != row) a->flags[part] |= 1;
      else flat_scatter_one(a, l, b, a->g[k]);
    }
}

/* dx (N, C, H, W), dense with strides ds, = zeros with g added at the logical flat indices
   idx (the adjoint of a gather): g and idx are n elements in the same memory order, `rows`
   blocks of n / rows elements; when an element's index falls in its block's batch row of dx
   (a max pool's gradient, batch outermost in g and dx) the rows run in parallel, the others
   after them on this thread; -1 when an index is out of range (dx is then partly written) */
int scatter_flat(const float *g, const long long *idx, float *dx, ll n, ll rows,
                 const ll *shape, const ll *ds, int parts) {
  const ll C = shape[1], H = shape[2], W = shape[3], CHW = C * H * W;
  int flags[MAX_WORKERS + 1] = {0};
  flat_scatter_args a = {g, idx, dx, n, C, H, W, shape[0] * CHW, {ds[0], ds[1], ds[2], ds[3]},
                    1.0 / W, 1.0 / H, 1.0 / CHW, 0, flags};
  if (rows < 2 || parts < 2) {
    memset(dx, 0, shape[0] * CHW * sizeof(float));
    flat_scatter_task(&a, 0, 1, 0);
    return flags[0] ? -1 : 0;
  }
  a.per = n / rows;
  a.own = 1;
  const int ran = par_run(flat_scatter_task, &a, rows, parts);
  int skipped = 0;
  for (int k = 0; k < ran; ++k) {
    if (flags[k] & 2) return -1;
    skipped |= flags[k];
  }
  if (skipped)
    for (ll row = 0; row < rows; ++row)
      for (ll k = row * a.per; k < (row + 1) * a.per; ++k) {
        const ll b = div_by(idx[k], CHW, a.ichw);
        if (b != row) flat_scatter_one(&a, idx[k], b, g[k]);
      }
  return 0;
}
