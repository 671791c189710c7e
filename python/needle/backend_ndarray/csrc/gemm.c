/* Matrix products (compiled after pool.c, one translation unit: see cpu_c.py). */

/* ---- matrix products: the BLAS NumPy links, one thread per block ---------------------------- */
/* The library's sgemm (CBLAS, row-major) is handed over by cpu_c.py; its own threads are
   set to one, and the pool splits a product into blocks of rows or columns instead. */
typedef void (*sgemm64_t)(int, int, int, int64_t, int64_t, int64_t, float, const float *,
                          int64_t, const float *, int64_t, float, float *, int64_t);
typedef void (*sgemm32_t)(int, int, int, int32_t, int32_t, int32_t, float, const float *,
                          int32_t, const float *, int32_t, float, float *, int32_t);
static void *blas_sgemm;
static int blas_ilp64;

void blas_configure(void *sgemm, int ilp64) {
  blas_sgemm = sgemm;
  blas_ilp64 = ilp64;
}

static void sgemm(int ta, int tb, ll M, ll N, ll K, const float *A, ll lda, const float *B,
                  ll ldb, float beta, float *C, ll ldc) {
  const int order = 101, nt = 111, t = 112; /* CblasRowMajor, CblasNoTrans, CblasTrans */
  if (blas_ilp64)
    ((sgemm64_t)blas_sgemm)(order, ta ? t : nt, tb ? t : nt, M, N, K, 1.0f, A, lda, B, ldb,
                            beta, C, ldc);
  else
    ((sgemm32_t)blas_sgemm)(order, ta ? t : nt, tb ? t : nt, (int32_t)M, (int32_t)N,
                            (int32_t)K, 1.0f, A, (int32_t)lda, B, (int32_t)ldb, beta, C,
                            (int32_t)ldc);
}

typedef struct {
  int ta, tb, by_cols;
  ll M, N, K, lda, ldb, ldc;
  const ll *oa, *ob; /* a batch: element offsets of each item of A and of B (NULL: all 0) */
  const float *A, *B;
  float *C;
} gemm_args;

#define GEMM_UNIT 16 /* rows or columns per unit of work */

static void gemm_task(const void *p, ll lo, ll hi, int part) {
  const gemm_args *g = p;
  (void)part;
  if (g->oa) { /* a batch: whole products [lo, hi), C's items one after the other */
    for (ll i = lo; i < hi; ++i)
      sgemm(g->ta, g->tb, g->M, g->N, g->K, g->A + g->oa[i], g->lda,
            g->B + (g->ob ? g->ob[i] : 0), g->ldb, 0.0f, g->C + i * g->M * g->ldc, g->ldc);
    return;
  }
  if (g->by_cols) { /* columns [c0, c1) of op(B) and C */
    const ll c0 = lo * GEMM_UNIT, c1 = hi * GEMM_UNIT < g->N ? hi * GEMM_UNIT : g->N;
    if (c1 > c0)
      sgemm(g->ta, g->tb, g->M, c1 - c0, g->K, g->A, g->lda, g->B + (g->tb ? c0 * g->ldb : c0),
            g->ldb, 0.0f, g->C + c0, g->ldc);
  } else { /* rows [r0, r1) of op(A) and C */
    const ll r0 = lo * GEMM_UNIT, r1 = hi * GEMM_UNIT < g->M ? hi * GEMM_UNIT : g->M;
    if (r1 > r0)
      sgemm(g->ta, g->tb, r1 - r0, g->N, g->K, g->A + (g->ta ? r0 : r0 * g->lda), g->lda,
            g->B, g->ldb, 0.0f, g->C + r0 * g->ldc, g->ldc);
  }
}

/* C = op(A) op(B), row-major with leading dimensions lda, ldb, ldc; op is a transpose when
   ta/tb. With oa not NULL, a batch of `batch` products: item i of A starts at element oa[i],
   of B at ob[i] (ob NULL: the same B for all), of C at i M ldc; runs of whole products go to
   the threads. Else one product, split into blocks of rows (or of columns when C is wider
   than tall). -1 when no sgemm was configured. */
int gemm(int ta, int tb, ll batch, ll M, ll N, ll K, const float *A, ll lda, const ll *oa,
         const float *B, ll ldb, const ll *ob, float *C, ll ldc, int parts) {
  if (!blas_sgemm) return -1;
  gemm_args g = {ta, tb, N > M, M, N, K, lda, ldb, ldc, oa, ob, A, B, C};
  const ll units = oa ? batch : ((g.by_cols ? N : M) + GEMM_UNIT - 1) / GEMM_UNIT;
  par_run(gemm_task, &g, units, parts);
  return 0;
}

/* ---- products of a few rows ---------------------------------------------------------------- */
/* C (M, N) = A (M, K) B (K, N) + beta C, all row-major, N % 16 == 0: blocks of up to 8 rows x 32
   columns in registers, k innermost, B read in place. For the steps of a recurrent layer (M a
   few dozen rows, B a weight that stays in cache across the steps), where a BLAS call
   repacks B every time. */
AI void rows_block(const int mb, const int nv, const float *A, ll lda, const float *Bm, ll ldb,
                   float beta, float *C, ll ldc, ll K) {
  v16 acc[8][2];
  for (int m = 0; m < mb; ++m)
    for (int v = 0; v < nv; ++v)
      acc[m][v] = beta != 0.0f ? beta * ld(C + m * ldc + 16 * v) : (v16){0};
  for (ll k = 0; k < K; ++k) {
    const v16 b0 = ld(Bm + k * ldb), b1 = nv > 1 ? ld(Bm + k * ldb + 16) : (v16){0};
    for (int m = 0; m < mb; ++m) {
      const float x = A[m * lda + k];
      acc[m][0] += x * b0;
      if (nv > 1) acc[m][1] += x * b1;
    }
  }
  for (int m = 0; m < mb; ++m)
    for (int v = 0; v < nv; ++v) st(C + m * ldc + 16 * v, acc[m][v]);
}

static void rows_gemm(ll M, ll N, ll K, const float *A, ll lda, const float *Bm, ll ldb,
                      float beta, float *C, ll ldc) {
  for (ll m0 = 0; m0 < M; m0 += 8) {
    const int mb = M - m0 < 8 ? (int)(M - m0) : 8;
    const float *Ar = A + m0 * lda;
    float *Cr = C + m0 * ldc;
    ll n0 = 0;
    if (mb == 8) {
      for (; n0 + 32 <= N; n0 += 32) rows_block(8, 2, Ar, lda, Bm + n0, ldb, beta, Cr + n0, ldc, K);
      for (; n0 < N; n0 += 16) rows_block(8, 1, Ar, lda, Bm + n0, ldb, beta, Cr + n0, ldc, K);
    } else {
      for (; n0 + 32 <= N; n0 += 32)
        for (int m = 0; m < mb; ++m)
          rows_block(1, 2, Ar + m * lda, lda, Bm + n0, ldb, beta, Cr + m * ldc + n0, ldc, K);
      for (; n0 < N; n0 += 16)
        for (int m = 0; m < mb; ++m)
          rows_block(1, 1, Ar + m * lda, lda, Bm + n0, ldb, beta, Cr + m * ldc + n0, ldc, K);
    }
  }
}
