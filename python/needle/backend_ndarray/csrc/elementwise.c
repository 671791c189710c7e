/* Elementwise kernels (compiled after pool.c, one translation unit: see cpu_c.py). */

/* ---- elementwise --------------------------------------------------------------------------- */
typedef struct { const float *x; float *y; } unary_args;

static void relu_task(const void *p, ll lo, ll hi, int part) {
  const unary_args *a = p;
  (void)part;
  const float *restrict x = a->x;
  float *restrict y = a->y;
  for (ll i = lo; i < hi; ++i) y[i] = x[i] < 0.0f ? 0.0f : x[i]; /* NaN stays */
}

/* y = max(x, 0) over n elements */
void relu(const float *x, float *y, ll n, int parts) {
  unary_args a = {x, y};
  par_run(relu_task, &a, n, parts);
}

/* an activation's backward from its output y: dx from the gradient g (n elements each) */
typedef struct { const float *g, *y; float *dx; } act_grad_args;

static void relu_grad_task(const void *p, ll lo, ll hi, int part) {
  const act_grad_args *a = p;
  (void)part;
  const float *restrict g = a->g, *restrict y = a->y;
  float *restrict dx = a->dx;
  for (ll i = lo; i < hi; ++i) { /* both read unconditionally: a select, not a branch */
    const float gv = g[i];
    dx[i] = y[i] > 0.0f ? gv : 0.0f;
  }
}

/* dx = g where y > 0, else 0 (ReLU's backward from its output y) */
void relu_grad(const float *g, const float *y, float *dx, ll n, int parts) {
  act_grad_args a = {g, y, dx};
  par_run(relu_grad_task, &a, n, parts);
}

static void tanh_grad_task(const void *p, ll lo, ll hi, int part) {
  const act_grad_args *a = p;
  const float *restrict g = a->g, *restrict y = a->y;
  float *restrict dx = a->dx;
  (void)part;
  for (ll i = lo; i < hi; ++i) dx[i] = (1.0f - y[i] * y[i]) * g[i];
}

/* dx = (1 - y^2) g: tanh's backward from its output y, over n elements */
void tanh_grad(const float *g, const float *y, float *dx, ll n, int parts) {
  act_grad_args a = {g, y, dx};
  par_run(tanh_grad_task, &a, n, parts);
}

/* ---- binary operations on arrays of one layout, or an array and a number -------------------- */
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_RSUB, OP_RDIV };

typedef struct { const float *a, *b; float *out; float s; int op; } binary_args;

#define BINARY_LOOP(expr)                      \
  for (ll i = lo; i < hi; ++i) {               \
    const float x = a[i], y = b ? b[i] : s;    \
    out[i] = (expr);                           \
  }

static void binary_task(const void *p, ll lo, ll hi, int part) {
  const binary_args *g = p;
  const float *restrict a = g->a, *restrict b = g->b;
  float *out = g->out; /* may be a or b (in place) */
  const float s = g->s;
  (void)part;
  switch (g->op) {
    case OP_ADD: BINARY_LOOP(x + y) break;
    case OP_SUB: BINARY_LOOP(x - y) break;
    case OP_MUL: BINARY_LOOP(x * y) break;
    case OP_DIV: BINARY_LOOP(x / y) break;
    case OP_RSUB: BINARY_LOOP(y - x) break;
    case OP_RDIV: BINARY_LOOP(y / x) break;
  }
}

/* out[i] = a[i] op b[i] (b NULL: the number s), over n elements; out may be a or b */
void binary(int op, const float *a, const float *b, float s, float *out, ll n, int parts) {
  binary_args g = {a, b, out, s, op};
  par_run(binary_task, &g, n, parts);
}

typedef struct { const float *a, *row; float *out; ll C; int op; } rows_binary_args;

static void binary_rows_task(const void *p, ll r0, ll r1, int part) {
  const rows_binary_args *g = p;
  (void)part;
  for (ll r = r0; r < r1; ++r) {
    binary_args one = {g->a + r * g->C, g->row, g->out + r * g->C, 0.0f, g->op};
    binary_task(&one, 0, g->C, 0);
  }
}

/* out[r, c] = a[r, c] op row[c] for the R rows of C elements of a (a row vector broadcast, as
   a bias is); out may be a */
void binary_rows(int op, const float *a, const float *row, float *out, ll R, ll C, int parts) {
  rows_binary_args g = {a, row, out, C, op};
  par_run(binary_rows_task, &g, R, parts);
}

/* ---- a scaled sum of arrays (a data-parallel reduce) --------------------------------------- */
typedef struct { const float *const *src; int k; float scale; float *out; } sum_scaled_args;

static void sum_scaled_task(const void *p, ll lo, ll hi, int part) {
  const sum_scaled_args *g = p;
  const float *const *src = g->src;
  float *restrict out = g->out;
  const float s = g->scale;
  (void)part;
  if (g->k == 1) {
    for (ll i = lo; i < hi; ++i) out[i] = src[0][i] * s;
    return;
  }
  for (ll i = lo; i < hi; ++i) { /* the terms in order, as repeated += would add them */
    float acc = src[0][i] + src[1][i];
    for (int j = 2; j < g->k; ++j) acc += src[j][i];
    out[i] = acc * s;
  }
}

/* out = (src[0] + ... + src[k-1]) * scale over n elements, in one pass (out may be a source) */
void sum_scaled(const float *const *src, int k, float scale, float *out, ll n, int parts) {
  sum_scaled_args g = {src, k, scale, out};
  par_run(sum_scaled_task, &g, n, parts);
}

/* ---- Adam ---------------------------------------------------------------------------------- */
typedef struct {
  float *w, *m, *v;
  const float *g;
  float lr, b1, b2, eps, wd, c1, c2;
  int decoupled;
} adam_args;

static void adam_task(const void *p, ll lo, ll hi, int part) {
  const adam_args *a = p;
  float *restrict w = a->w, *restrict m = a->m, *restrict v = a->v;
  const float *restrict g = a->g;
  const float b1 = a->b1, b2 = a->b2, wd = a->wd, keep = 1.0f - a->lr * a->wd;
  const float step = a->lr / a->c1, c2 = a->c2, eps = a->eps;
  (void)part;
  /* decoupled (AdamW): w *= 1 - lr wd first; else g += wd w */
  const float wk = a->decoupled ? keep : 1.0f, gk = a->decoupled ? 0.0f : wd;
  for (ll i = lo; i < hi; ++i) {
    const float wi = w[i] * wk, gi = g[i] + gk * w[i];
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = wi - step * mi / (sqrtf(vi / c2) + eps);
  }
}

/* One Adam step in place on w, m, v (n elements) for the gradient g (the rule of
   needle.optim.Adam/AdamW; c1 = 1 - b1^t, c2 = 1 - b2^t) */
void adam(float *w, const float *g, float *m, float *v, ll n, float lr, float b1, float b2,
          float eps, float wd, int decoupled, float c1, float c2, int parts) {
  adam_args a = {w, m, v, g, lr, b1, b2, eps, wd, c1, c2, decoupled};
  par_run(adam_task, &a, n, parts);
}

/* ---- SGD ----------------------------------------------------------------------------------- */
typedef struct {
  float *w, *u;
  const float *g;
  float lr, m, wd;
  int nesterov;
} sgd_args;

static void sgd_task(const void *p, ll lo, ll hi, int part) {
  const sgd_args *a = p;
  float *restrict w = a->w, *restrict u = a->u;
  const float *restrict g = a->g;
  const float lr = a->lr, m = a->m, wd = a->wd, k = 1.0f - a->m;
  (void)part;
  if (!u) {
    for (ll i = lo; i < hi; ++i) w[i] -= lr * (g[i] + wd * w[i]);
  } else if (a->nesterov) {
    for (ll i = lo; i < hi; ++i) {
      const float gi = g[i] + wd * w[i], ui = m * u[i] + k * gi;
      u[i] = ui;
      w[i] -= lr * (m * ui + k * gi);
    }
  } else {
    for (ll i = lo; i < hi; ++i) {
      const float ui = m * u[i] + k * (g[i] + wd * w[i]);
      u[i] = ui;
      w[i] -= lr * ui;
    }
  }
}

/* One SGD step in place on w and u (u NULL: no momentum) for the gradient g, n elements (the
   rule of needle.optim.SGD) */
void sgd(float *w, const float *g, float *u, ll n, float lr, float m, float wd, int nesterov,
         int parts) {
  sgd_args a = {w, u, g, lr, m, wd, nesterov};
  par_run(sgd_task, &a, n, parts);
}

/* ---- sums over leading axes: the column sums of a row-major (R, C) matrix ------------------- */
typedef struct { const float *x; float *parts; ll C, stride; } colsum_args;

#define COLSUM_BLOCK 64 /* rows summed apart before joining the part's total (bounds the error) */

static void colsum_task(const void *p, ll r0, ll r1, int part) {
  const colsum_args *a = p;
  const ll C = a->C;
  float *restrict tot = a->parts + part * a->stride, *restrict blk = tot + C;
  for (ll c = 0; c < C; ++c) tot[c] = 0.0f;
  for (ll b0 = r0; b0 < r1; b0 += COLSUM_BLOCK) {
    const ll b1 = b0 + COLSUM_BLOCK < r1 ? b0 + COLSUM_BLOCK : r1;
    memcpy(blk, a->x + b0 * C, C * sizeof(float));
    for (ll r = b0 + 1; r < b1; ++r) {
      const float *restrict xr = a->x + r * C;
      for (ll c = 0; c < C; ++c) blk[c] += xr[c];
    }
    for (ll c = 0; c < C; ++c) tot[c] += blk[c];
  }
}

/* out (C) = the sums over the rows of x (R, C), the rows split over `parts` threads (each sums
   blocks of 64 rows, then the blocks; the parts are added in order); -1 when out of memory */
int col_sums(const float *x, float *out, ll R, ll C, int parts) {
  if (parts > pool.threads) parts = pool.threads;
  if (parts < 1) parts = 1;
  colsum_args a = {x, NULL, C, (2 * C + 15) / 16 * 16 + 16};
  a.parts = aligned_alloc(64, (size_t)parts * a.stride * sizeof(float));
  if (!a.parts) return -1;
  const int ran = par_run(colsum_task, &a, R, parts);
  for (ll c = 0; c < C; ++c) {
    float s = 0.0f;
    for (int k = 0; k < ran; ++k) s += a.parts[k * a.stride + c];
    out[c] = s;
  }
  free(a.parts);
  return 0;
}
