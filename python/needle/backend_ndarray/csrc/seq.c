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
