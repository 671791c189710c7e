/* needle's CPU kernels in C: a fork-join thread pool and the loops NumPy runs badly.

   Built once by the system C compiler with -O3 -march=native and cached (c_build.py); cpu_c.py
   loads it with ctypes, which releases the GIL for every call. Without a compiler (or with
   NEEDLE_CPU_C=0) every caller runs the NumPy kernels of the base classes instead.

   The files of csrc/ are one translation unit (cpu_c.py joins them, this one first).

   The pool: `par_run(fn, args, n, parts)` runs fn(args, lo, hi, part) over `parts` contiguous
   blocks of range(n), block 0 on the calling thread and the others on worker threads, and
   returns when all are done. Workers wait for the next job calling sched_yield for a few
   milliseconds (longer than the gaps between the kernels of a training step), then sleep on
   a condition variable. A Python thread pool hand-off costs ~80 us on a 2-core VM; this one
   costs about one. One job runs at a time: a second thread asking meanwhile runs its job
   alone. A forked child starts without workers and makes new ones.

   Every array the kernels take is float32 and C-contiguous unless a comment says otherwise
   (cpu_c.py checks). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <math.h>
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

/* sum of x[0..n) in 16 lanes (vectorized; a fixed order, not left to right) */
static inline float lanes_sum(const float *x, ll n) {
  float acc[16] = {0};
  ll k = 0;
  for (; k + 16 <= n; k += 16)
    for (int j = 0; j < 16; ++j) acc[j] += x[k + j];
  float s = 0.0f;
  for (int j = 0; j < 16; ++j) s += acc[j];
  for (; k < n; ++k) s += x[k];
  return s;
}

/* sum of x[k] y[k] in 16 lanes */
static inline float lanes_dot(const float *x, const float *y, ll n) {
  float acc[16] = {0};
  ll k = 0;
  for (; k + 16 <= n; k += 16)
    for (int j = 0; j < 16; ++j) acc[j] += x[k + j] * y[k + j];
  float s = 0.0f;
  for (int j = 0; j < 16; ++j) s += acc[j];
  for (; k < n; ++k) s += x[k] * y[k];
  return s;
}
