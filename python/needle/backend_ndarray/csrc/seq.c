/* Embeddings (compiled after pool.c, one translation unit: see cpu_c.py). */

typedef struct { const float *g; const int64_t *ids; float *out; ll n, D; } scatter_args;

static void scatter_task(const void *p, ll c0, ll c1, int part) {
  const scatter_args *a = p;
  (void)part;
  const ll D = a->D;
  for (ll k = 0; k < a->n; ++k) { /* in order: the sums are those of one pass */
    float *o = a->out + a->ids[k] * D;
    const float *g = a->g + k * D;
    for (ll c = c0; c < c1; ++c) o[c] += g[c];
  }
}

/* out (V, D), zeroed by the caller, += the rows of g (n, D) at rows ids (n,); each thread
   owns a block of the D columns, so repeated ids need no atomics */
void embedding_scatter(const float *g, const int64_t *ids, float *out, ll n, ll D,
                       int parts) {
  scatter_args a = {g, ids, out, n, D};
  if (parts > 1 && D < 16 * parts) parts = 1;
  par_run(scatter_task, &a, D, parts);
}

/* ---- tanh and the LSTM time loops -------------------------------------------------------- */
/* tanh(x) as x P(x^2) / Q(x^2) on [-7.9, 7.9] (the rational minimax form Eigen uses), +-1
   beyond, x itself below 4e-4: a few ulp, and the loops that call it vectorize. */
static inline float vtanhf(float x) {
  const float c = 7.90531110763549805f;
  float xc = x > c ? c : x;
  xc = xc < -c ? -c : xc;
  const float x2 = xc * xc;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  const float y = xc * p / q;
  return fabsf(x) < 4e-4f ? x : y;
}

static inline float vsigmoidf(float x) { return 0.5f * vtanhf(0.5f * x) + 0.5f; }

typedef struct {
  const float *xw, *w, *wt, *h0, *c0, *g_h, *g_hl, *g_cl; /* wt: w^T (4H, H), or NULL */
  float *hs, *cs, *tcs, *acts, *dgates, *dh0, *dc0;
  ll T, B, H;
} lstm_args;

/* the batch rows [b0, b1) through every step: rows of an LSTM never meet, so each thread
   runs its own rows from the first step to the last without waiting for the others */
static void lstm_fwd_task(const void *p, ll b0, ll b1, int part) {
  const lstm_args *a = p;
  const ll T = a->T, B = a->B, H = a->H, G = 4 * H, M = b1 - b0;
  (void)part;
  for (ll t = 0; t < T; ++t) {
    float *act = a->acts + (t * B + b0) * G;
    memcpy(act, a->xw + (t * B + b0) * G, M * G * sizeof(float));
    const float *hp = t ? a->hs + ((t - 1) * B + b0) * H : a->h0 + b0 * H;
    const float *cp = t ? a->cs + ((t - 1) * B + b0) * H : a->c0 + b0 * H;
    if (G % 16 == 0) rows_gemm(M, G, H, hp, H, a->w, G, 1.0f, act, G);
    else sgemm(0, 0, M, G, H, hp, H, a->w, G, 1.0f, act, G);
    for (ll r = 0; r < M; ++r) {
      float *restrict ar = act + r * G;
      float *restrict c = a->cs + (t * B + b0 + r) * H;
      float *restrict tc = a->tcs + (t * B + b0 + r) * H;
      float *restrict h = a->hs + (t * B + b0 + r) * H;
      const float *restrict cpr = cp + r * H;
      for (ll j = 0; j < 2 * H; ++j) ar[j] = vsigmoidf(ar[j]);  /* i, f */
      for (ll j = 2 * H; j < 3 * H; ++j) ar[j] = vtanhf(ar[j]); /* g */
      for (ll j = 3 * H; j < G; ++j) ar[j] = vsigmoidf(ar[j]);  /* o */
      const float *restrict gi = ar, *restrict gf = ar + H, *restrict gg = ar + 2 * H;
      const float *restrict go = ar + 3 * H;
      for (ll j = 0; j < H; ++j) c[j] = gf[j] * cpr[j] + gi[j] * gg[j];
      for (ll j = 0; j < H; ++j) tc[j] = vtanhf(c[j]);
      for (ll j = 0; j < H; ++j) h[j] = go[j] * tc[j];
    }
  }
}

/* One LSTM layer over time (gates i, f, g, o; weights (H, 4H)): from the input projection xw
   (T, B, 4H) and the initial h0, c0 (B, H), the hidden states hs, cell states cs, their
   tanh tcs (T, B, H) and the activated gates acts (T, B, 4H). -1 without an sgemm. */
int lstm_fwd(const float *xw, const float *w, const float *h0, const float *c0, float *hs,
             float *cs, float *tcs, float *acts, ll T, ll B, ll H, int parts) {
  if (!blas_sgemm) return -1;
  lstm_args a = {.xw = xw, .w = w, .h0 = h0, .c0 = c0, .hs = hs, .cs = cs, .tcs = tcs,
                 .acts = acts, .T = T, .B = B, .H = H};
  par_run(lstm_fwd_task, &a, B, parts);
  return 0;
}

static void lstm_bwd_task(const void *p, ll b0, ll b1, int part) {
  const lstm_args *a = p;
  const ll T = a->T, B = a->B, H = a->H, G = 4 * H, M = b1 - b0;
  (void)part;
  float *dh = a->dh0 + b0 * H, *dc = a->dc0 + b0 * H; /* the running gradients live there */
  for (ll k = 0; k < M * H; ++k) {
    dh[k] = a->g_hl ? a->g_hl[b0 * H + k] : 0.0f;
    dc[k] = a->g_cl ? a->g_cl[b0 * H + k] : 0.0f;
  }
  for (ll t = T - 1; t >= 0; --t) {
    float *dg = a->dgates + (t * B + b0) * G;
    const float *cp = t ? a->cs + ((t - 1) * B + b0) * H : a->c0 + b0 * H;
    for (ll r = 0; r < M; ++r) {
      const float *restrict ar = a->acts + (t * B + b0 + r) * G;
      const float *restrict tc = a->tcs + (t * B + b0 + r) * H;
      const float *restrict gi = ar, *restrict gf = ar + H, *restrict gg = ar + 2 * H;
      const float *restrict go = ar + 3 * H, *restrict cpr = cp + r * H;
      float *restrict dgr = dg + r * G, *restrict dhr = dh + r * H, *restrict dcr = dc + r * H;
      if (a->g_h) {
        const float *restrict gh = a->g_h + (t * B + b0 + r) * H;
        for (ll j = 0; j < H; ++j) dhr[j] += gh[j];
      }
      /* one simple loop per quantity: each vectorizes (one loop writing all four blocks did
         not) and a row stays in L1 */
      float *restrict di = dgr, *restrict df = dgr + H, *restrict dgg = dgr + 2 * H;
      float *restrict dout = dgr + 3 * H;
      for (ll j = 0; j < H; ++j) dcr[j] += dhr[j] * go[j] * (1.0f - tc[j] * tc[j]);
      for (ll j = 0; j < H; ++j) di[j] = dcr[j] * gg[j] * gi[j] * (1.0f - gi[j]);
      for (ll j = 0; j < H; ++j) df[j] = dcr[j] * cpr[j] * gf[j] * (1.0f - gf[j]);
      for (ll j = 0; j < H; ++j) dgg[j] = dcr[j] * gi[j] * (1.0f - gg[j] * gg[j]);
      for (ll j = 0; j < H; ++j) dout[j] = dhr[j] * tc[j] * go[j] * (1.0f - go[j]);
      for (ll j = 0; j < H; ++j) dcr[j] *= gf[j];
    }
    if (a->wt) rows_gemm(M, H, G, dg, G, a->wt, H, 0.0f, dh, H); /* dh = dgates_t W^T */
    else sgemm(0, 1, M, H, G, dg, G, a->w, G, 0.0f, dh, H);
  }
}

/* The backward of lstm_fwd for the gradients of the hidden states g_h (T, B, H) and of the
   last hidden and cell states g_hl, g_cl (B, H) (any may be NULL: zero): the gradient of the
   pre-activations dgates (T, B, 4H) and of the initial states dh0, dc0 (B, H). -1 without an
   sgemm. */
int lstm_bwd(const float *g_h, const float *g_hl, const float *g_cl, const float *cs,
             const float *tcs, const float *acts, const float *w, const float *c0,
             float *dgates, float *dh0, float *dc0, ll T, ll B, ll H, int parts) {
  if (!blas_sgemm) return -1;
  float *wt = H % 16 == 0 ? malloc((size_t)4 * H * H * sizeof(float)) : NULL;
  if (wt)
    for (ll r = 0; r < H; ++r)
      for (ll q = 0; q < 4 * H; ++q) wt[q * H + r] = w[r * 4 * H + q];
  lstm_args a = {.g_h = g_h, .g_hl = g_hl, .g_cl = g_cl, .cs = (float *)cs,
                 .tcs = (float *)tcs, .acts = (float *)acts, .w = w, .wt = wt, .c0 = c0,
                 .dgates = dgates, .dh0 = dh0, .dc0 = dc0, .T = T, .B = B, .H = H};
  par_run(lstm_bwd_task, &a, B, parts);
  free(wt);
  return 0;
}
