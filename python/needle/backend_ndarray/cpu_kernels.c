/* needle's CPU kernels in C: a fork-join thread pool and the loops NumPy runs badly.

   Built once by the system C compiler with -O3 -march=native and cached (c_build.py); cpu_c.py
   loads it with ctypes, which releases the GIL for every call. Without a compiler (or with
   NEEDLE_CPU_C=0) every caller runs the NumPy kernels of the base classes instead.

   The pool: `par_run(fn, args, n, parts)` runs fn(args, lo, hi, part) over `parts` contiguous
   blocks of range(n), block 0 on the calling thread and the others on worker threads, and
   returns when all are done. Workers wait for the next job spinning for a short while (the
   gaps between the kernels of a training step are a few microseconds of Python), then sleep
   on a condition variable. A Python thread pool hand-off costs ~80 us on a 2-core VM; this one
   costs a few. One job runs at a time: a second thread asking meanwhile runs its job alone. A
   forked child starts without workers and makes new ones.

   Layouts: convolutions are NHWC with (KH, KW, C_in, C_out) weights; batch norm works on
   channels-last rows (R, C). Every array is float32 and C-contiguous (cpu_c.py checks). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef long long ll;
typedef void (*task_fn)(const void *args, ll lo, ll hi, int part);

/* ---- the pool ------------------------------------------------------------------------------ */
#define MAX_WORKERS 63

static struct {
  pthread_mutex_t job;       /* held while a job is dispatched */
  pthread_mutex_t sleep_lock;
  pthread_cond_t wake;
  int workers;               /* threads started */
  int threads;               /* parallelism wanted, the calling thread included */
  int spin;                  /* microseconds a worker waits for work (yielding) before it sleeps */
  int fork_handler;
  _Atomic unsigned gen;      /* job generation: a worker runs a job when it changes */
  _Atomic int pending;       /* workers that have not finished the current job */
  _Atomic int sleepers;
  task_fn fn;
  const void *args;
  ll n;
  int parts;
  unsigned start_gen[MAX_WORKERS + 1];
} pool = {.job = PTHREAD_MUTEX_INITIALIZER, .sleep_lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER, .threads = 1, .spin = 5000};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static long long now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static void *worker_main(void *arg) {
  const int id = (int)(intptr_t)arg;
  unsigned seen = pool.start_gen[id];
  for (;;) {
    unsigned g;
    int spins = 0;
    long long since = now_us();
    while ((g = atomic_load_explicit(&pool.gen, memory_order_acquire)) == seen) {
      /* yield, not pause: a pause loop on one vCPU of a 2-core VM slowed the Python thread
         on the other by 11%; a loop of sched_yield does not, and gives the core to any
         thread that wants it. Waking a sleeping worker costs 50-90 us there. */
      if ((++spins & 63) || now_us() - since < pool.spin) {
        sched_yield();
        continue;
      }
      pthread_mutex_lock(&pool.sleep_lock);
      atomic_fetch_add(&pool.sleepers, 1);
      while (atomic_load(&pool.gen) == seen) pthread_cond_wait(&pool.wake, &pool.sleep_lock);
      atomic_fetch_sub(&pool.sleepers, 1);
      pthread_mutex_unlock(&pool.sleep_lock);
      spins = 0;
    }
    seen = g;
    const int parts = pool.parts;
    if (id < parts) pool.fn(pool.args, pool.n * id / parts, pool.n * (id + 1) / parts, id);
    atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
  }
  return NULL;
}

static void after_fork_in_child(void) {
  /* the workers do not exist in the child; whatever a dispatching thread held is gone */
  pthread_mutex_init(&pool.job, NULL);
  pthread_mutex_init(&pool.sleep_lock, NULL);
  pthread_cond_init(&pool.wake, NULL);
  pool.workers = 0;
  atomic_store(&pool.pending, 0);
  atomic_store(&pool.sleepers, 0);
}

static void start_workers(int want) {
  if (!pool.fork_handler) {
    pthread_atfork(NULL, NULL, after_fork_in_child);
    pool.fork_handler = 1;
  }
  while (pool.workers < want && pool.workers < MAX_WORKERS) {
    const int id = pool.workers + 1;
    pool.start_gen[id] = atomic_load(&pool.gen);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    const int err = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)id);
    pthread_attr_destroy(&attr);
    if (err) break;
    pool.workers = id;
  }
}

/* parallelism (the calling thread included) and how long (us) a worker waits for work before
   it sleeps (-1: unchanged) */
void pool_configure(int threads, int spin) {
  pthread_mutex_lock(&pool.job);
  pool.threads = threads < 1 ? 1 : threads;
  if (spin >= 0) pool.spin = spin;
  pthread_mutex_unlock(&pool.job);
}

/* fn over `parts` blocks of range(n); returns the number of blocks it ran (1 when it ran
   alone: a job of another thread was in flight, or no worker could be started) */
static int par_run(task_fn fn, const void *args, ll n, int parts) {
  if (parts > pool.threads) parts = pool.threads;
  if (parts > n) parts = (int)n;
  if (parts <= 1 || pthread_mutex_trylock(&pool.job) != 0) {
    fn(args, 0, n, 0);
    return 1;
  }
  if (pool.workers < parts - 1) start_workers(parts - 1);
  if (parts > pool.workers + 1) parts = pool.workers + 1;
  if (parts <= 1) {
    pthread_mutex_unlock(&pool.job);
    fn(args, 0, n, 0);
    return 1;
  }
  pool.fn = fn;
  pool.args = args;
  pool.n = n;
  pool.parts = parts;
  atomic_store(&pool.pending, pool.workers);
  atomic_fetch_add(&pool.gen, 1);
  if (atomic_load(&pool.sleepers)) {
    pthread_mutex_lock(&pool.sleep_lock);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.sleep_lock);
  }
  fn(args, 0, n / parts, 0);
  for (long spins = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; ++spins) {
    if (spins < 200000) cpu_relax();
    else sched_yield();
  }
  pthread_mutex_unlock(&pool.job);
  return parts;
}

/* a no-op job: the pool's own cost (tests, benchmarks) */
static void noop_task(const void *args, ll lo, ll hi, int part) {
  (void)args; (void)lo; (void)hi; (void)part;
}

int pool_noop(ll n, int parts) { return par_run(noop_task, NULL, n, parts); }

/* ---- vectors ------------------------------------------------------------------------------- */
/* 16 floats: one AVX-512 register, two AVX2 ones; unaligned loads and stores via memcpy */
typedef float v16 __attribute__((vector_size(64)));
static inline v16 ld(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, v16 v) { memcpy(p, &v, sizeof v); }
#define AI static inline __attribute__((always_inline))

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
  ll M, N, K, lda, ldb, ldc, sa, sb, sc;  /* s*: element strides between batch items */
  const float *A, *B;
  float *C;
  float beta;
} gemm_args;

#define GEMM_UNIT 16 /* rows or columns per unit of work */

static void gemm_task(const void *p, ll lo, ll hi, int part) {
  const gemm_args *g = p;
  (void)part;
  if (g->sa || g->sb || g->sc) { /* a batch: whole products [lo, hi) */
    for (ll i = lo; i < hi; ++i)
      sgemm(g->ta, g->tb, g->M, g->N, g->K, g->A + i * g->sa, g->lda, g->B + i * g->sb,
            g->ldb, g->beta, g->C + i * g->sc, g->ldc);
    return;
  }
  if (g->by_cols) { /* columns [c0, c1) of op(B) and C */
    const ll c0 = lo * GEMM_UNIT, c1 = hi * GEMM_UNIT < g->N ? hi * GEMM_UNIT : g->N;
    if (c1 > c0)
      sgemm(g->ta, g->tb, g->M, c1 - c0, g->K, g->A, g->lda, g->B + (g->tb ? c0 * g->ldb : c0),
            g->ldb, g->beta, g->C + c0, g->ldc);
  } else { /* rows [r0, r1) of op(A) and C */
    const ll r0 = lo * GEMM_UNIT, r1 = hi * GEMM_UNIT < g->M ? hi * GEMM_UNIT : g->M;
    if (r1 > r0)
      sgemm(g->ta, g->tb, r1 - r0, g->N, g->K, g->A + (g->ta ? r0 : r0 * g->lda), g->lda,
            g->B, g->ldb, g->beta, g->C + r0 * g->ldc, g->ldc);
  }
}

/* C[i] = op(A[i]) op(B[i]) + beta C[i] for i < batch, row-major with leading dimensions
   lda, ldb, ldc and batch strides sa, sb, sc (all 0 for one product); op is a transpose
   when ta/tb. One product is split into blocks of rows (or of columns when C is wider than
   tall), a batch into runs of whole products. -1 when no sgemm was configured. */
int gemm(int ta, int tb, ll batch, ll M, ll N, ll K, const float *A, ll lda, ll sa,
         const float *B, ll ldb, ll sb, float beta, float *C, ll ldc, ll sc, int parts) {
  if (!blas_sgemm) return -1;
  gemm_args g = {ta, tb, N > M, M, N, K, lda, ldb, ldc, sa, sb, sc, A, B, C, beta};
  if (batch > 1) {
    par_run(gemm_task, &g, batch, parts);
  } else {
    g.sa = g.sb = g.sc = 0;
    const ll units = ((g.by_cols ? N : M) + GEMM_UNIT - 1) / GEMM_UNIT;
    par_run(gemm_task, &g, units, parts);
  }
  return 0;
}

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
typedef struct { const float *x; float *cols; ll H, W, C, KH, KW, S, P, HO, WO; } win_args;

static void im2col_task(const void *p, ll n0, ll n1, int part) {
  const win_args *a = p;
  (void)part;
  const ll H = a->H, W = a->W, C = a->C, KH = a->KH, KW = a->KW, S = a->S, P = a->P;
  const ll HO = a->HO, WO = a->WO, run = KW * C;
  for (ll n = n0; n < n1; ++n) {
    const float *xn = a->x + n * H * W * C;
    float *dst = a->cols + n * HO * WO * KH * run;
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
    float *dxn = (float *)a->x + n * H * W * C; /* the output, see col2im */
    const float *g = a->cols + n * HO * WO * KH * KW * C;
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
  win_args a = {dx, (float *)d, H, W, C, KH, KW, S, P, HO, WO};
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
   padded buffer that stays in cache and then cropped into dx. CI % 16 == 0 */
void conv_dgrad(const float *g, const float *wt, float *dx, ll N, ll H, ll W, ll P, ll CI,
                ll KH, ll KW, ll CO, ll S, ll HO, ll WO, int parts) {
  const ll HP = H + 2 * P, WP = W + 2 * P;  /* P: the padding (the pool is `pool`) */
  if (parts > pool.threads) parts = pool.threads;
  if (parts > N) parts = (int)N;
  if (parts < 1) parts = 1;
  float *pad = malloc((size_t)parts * HP * WP * CI * sizeof(float));
  if (!pad) return;
  dgrad_args a = {{NULL, wt, NULL, g, dx, HP, WP, CI, KH, KW, CO, S, HO, WO, 0}, H, W, P, pad};
  par_run(conv_dgrad_task, &a, N, parts);
  free(pad);
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

/* ---- batch norm over channels-last rows (R, C) ---------------------------------------------- */
typedef struct {
  const float *x, *dy, *mean, *rstd, *scale, *shift, *mdb, *mdw;
  float *y;
  double *parts;  /* per part: 2 C partial sums, `stride` doubles apart */
  ll C, stride;
} bn_args;

/* room for `parts` blocks of 2 C doubles, each starting on its own cache line */
static double *bn_partials(int parts, ll C, ll *stride) {
  *stride = (2 * C + 7) / 8 * 8 + 8;
  return aligned_alloc(64, (size_t)parts * *stride * sizeof(double));
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
int bn_stats(const float *x, ll R, ll C, double *mean, double *var, int parts) {
  if (parts > pool.threads) parts = pool.threads;
  if (parts < 1) parts = 1;
  ll stride;
  double *buf = bn_partials(parts, C, &stride);
  if (!buf) return -1;
  bn_args a = {.x = x, .parts = buf, .C = C, .stride = stride};
  const int ran = par_run(bn_stats_task, &a, R, parts);
  for (ll c = 0; c < C; ++c) {
    double s = 0.0, q = 0.0;
    for (int k = 0; k < ran; ++k) {
      s += buf[k * stride + c];
      q += buf[k * stride + C + c];
    }
    const double m = s / R;
    mean[c] = m + x[c];
    var[c] = q / R - m * m;
    if (var[c] < 0.0) var[c] = 0.0;
  }
  free(buf);
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
void bn_apply(const float *x, float *y, ll R, ll C, const float *mean, const float *scale,
              const float *shift, int parts) {
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
int bn_bwd_sums(const float *dy, const float *x, ll R, ll C, const float *mean,
                const float *rstd, double *db, double *dw, int parts) {
  if (parts > pool.threads) parts = pool.threads;
  if (parts < 1) parts = 1;
  ll stride;
  double *buf = bn_partials(parts, C, &stride);
  if (!buf) return -1;
  bn_args a = {.x = x, .dy = dy, .mean = mean, .rstd = rstd, .parts = buf, .C = C,
               .stride = stride};
  const int ran = par_run(bn_bwd_sums_task, &a, R, parts);
  for (ll c = 0; c < C; ++c) {
    double s = 0.0, q = 0.0;
    for (int k = 0; k < ran; ++k) {
      s += buf[k * stride + c];
      q += buf[k * stride + C + c];
    }
    db[c] = s;
    dw[c] = q;
  }
  free(buf);
  return 0;
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
void bn_bwd_dx(const float *dy, const float *x, float *dx, ll R, ll C, const float *mean,
               const float *rstd, const float *scale, const float *mdb, const float *mdw,
               int parts) {
  bn_args a = {.x = x, .dy = dy, .y = dx, .mean = mean, .rstd = rstd, .scale = scale,
               .mdb = mdb, .mdw = mdw, .C = C};
  par_run(bn_bwd_dx_task, &a, R, parts);
}
