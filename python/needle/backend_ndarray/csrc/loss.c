/* Softmax and softmax cross-entropy over contiguous rows (compiled after pool.c).

   exp is `vexpf`, written so the compiler vectorizes the loops that call it (glibc's expf is a
   scalar call): within 2 ulp of the true value over the range of normal results, inf above
   88.72, 0 below -87.33 (no denormal results), NaN for NaN. */
#include <math.h>

static inline float vexpf(float x) {
  const float big = 88.7228394f, small = -87.3365448f;
  float xc = x > big ? big : x; /* a NaN passes both tests and stays NaN */
  xc = xc < small ? small : xc;
  const float t = xc * 1.44269504f + 12582912.0f; /* round(x / ln 2) + 1.5 * 2^23 */
  const float n = t - 12582912.0f;
  float r = xc - n * 0.693145752f; /* x - n ln 2, ln 2 in two parts (Cody-Waite) */
  r = r - n * 1.42860677e-6f;
  /* exp(r), |r| <= ln2 / 2: the minimax polynomial of Cephes' expf */
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23; /* 2^n, n in [-126, 128) */
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  float y = p * scale;
  y = x > big ? INFINITY : y;
  return x < small ? 0.0f : y;
}

typedef struct {
  const float *z;
  const int64_t *labels;
  float *out, *lse, *rowloss;
  ll K;
  float scale;
  _Atomic int *bad; /* set when a row's maximum is not finite (the NumPy kernel handles it) */
} rows_args;

/* The reductions keep 16 partial results (one per lane of a vector), so they vectorize
   without reassociating one sum; a NaN is skipped by the maximum and then poisons the sum. */
static inline float row_max(const float *z, ll K) {
  float mx[16];
  for (int j = 0; j < 16; ++j) mx[j] = -INFINITY;
  ll k = 0;
  for (; k + 16 <= K; k += 16)
    for (int j = 0; j < 16; ++j) mx[j] = z[k + j] > mx[j] ? z[k + j] : mx[j];
  float m = -INFINITY;
  for (int j = 0; j < 16; ++j) m = mx[j] > m ? mx[j] : m;
  for (; k < K; ++k) m = z[k] > m ? z[k] : m;
  return m;
}

static inline float row_sum_exp(const float *z, ll K, float m) {
  float acc[16] = {0};
  ll k = 0;
  for (; k + 16 <= K; k += 16)
    for (int j = 0; j < 16; ++j) acc[j] += vexpf(z[k + j] - m);
  float s = 0.0f;
  for (int j = 0; j < 16; ++j) s += acc[j];
  for (; k < K; ++k) s += vexpf(z[k] - m);
  return s;
}

static void ce_fwd_task(const void *p, ll r0, ll r1, int part) {
  const rows_args *a = p;
  const ll K = a->K;
  (void)part;
  for (ll r = r0; r < r1; ++r) {
    const float *z = a->z + r * K;
    const float m = row_max(z, K);
    if (!isfinite(m)) {
      atomic_store(a->bad, 1);
      continue;
    }
    const float lse = logf(row_sum_exp(z, K, m)) + m;
    a->lse[r] = lse;
    a->rowloss[r] = lse - z[a->labels[r]];
  }
}

/* lse[r] = logsumexp(z[r]) and rowloss[r] = lse[r] - z[r, labels[r]] for the rows of z (R, K);
   returns 1 when some row's maximum is not finite (nothing is then valid), else 0 */
int softmax_ce_fwd(const float *z, const int64_t *labels, float *lse, float *rowloss, ll R, ll K,
                   int parts) {
  _Atomic int bad = 0;
  rows_args a = {.z = z, .labels = labels, .lse = lse, .rowloss = rowloss, .K = K, .bad = &bad};
  par_run(ce_fwd_task, &a, R, parts);
  return atomic_load(&bad);
}

static void ce_bwd_task(const void *p, ll r0, ll r1, int part) {
  const rows_args *a = p;
  const ll K = a->K;
  const float s = a->scale;
  (void)part;
  for (ll r = r0; r < r1; ++r) {
    const float *z = a->z + r * K;
    float *o = a->out + r * K;
    const float lse = a->lse[r];
    for (ll k = 0; k < K; ++k) o[k] = vexpf(z[k] - lse) * s;
    o[a->labels[r]] -= s;
  }
}

/* out = (softmax(z) - onehot(labels)) * scale for the rows of z (R, K), with lse from the
   forward */
void softmax_ce_bwd(const float *z, const int64_t *labels, const float *lse, float scale,
                    float *out, ll R, ll K, int parts) {
  rows_args a = {.z = z, .labels = labels, .out = out, .lse = (float *)lse, .K = K,
                 .scale = scale};
  par_run(ce_bwd_task, &a, R, parts);
}

static void softmax_task(const void *p, ll r0, ll r1, int part) {
  const rows_args *a = p;
  const ll K = a->K;
  (void)part;
  for (ll r = r0; r < r1; ++r) {
    const float *z = a->z + r * K;
    float *o = a->out + r * K;
    float m = row_max(z, K);
    if (m == -INFINITY) { /* every entry -inf: no mass, zeros (not nan) */
      memset(o, 0, K * sizeof(float));
      continue;
    }
    if (!isfinite(m)) {
      atomic_store(a->bad, 1);
      continue;
    }
    for (ll k = 0; k < K; ++k) o[k] = vexpf(z[k] - m);
    const float inv = 1.0f / lanes_sum(o, K);
    for (ll k = 0; k < K; ++k) o[k] *= inv;
  }
}

/* out = softmax of each row of z (R, K); 1 when a row's maximum is +inf or nan */
int softmax_rows(const float *z, float *out, ll R, ll K, int parts) {
  _Atomic int bad = 0;
  rows_args a = {.z = z, .out = out, .K = K, .bad = &bad};
  par_run(softmax_task, &a, R, parts);
  return atomic_load(&bad);
}
