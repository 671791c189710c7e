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

typedef struct { const float *g, *y; float *dx; } relu_grad_args;

static void relu_grad_task(const void *p, ll lo, ll hi, int part) {
  const relu_grad_args *a = p;
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
  relu_grad_args a = {g, y, dx};
  par_run(relu_grad_task, &a, n, parts);
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
