//! The CPU backend's thread pool. A whole forward pass runs inside it (`install`), so the many
//! short parallel regions of a decode step split work between pool threads that are already
//! awake, instead of waking sleeping threads from outside the pool each time.

use std::sync::OnceLock;

use rayon::{ThreadPool, ThreadPoolBuilder};

static POOL: OnceLock<ThreadPool> = OnceLock::new();
static THREADS: OnceLock<usize> = OnceLock::new();

/// Choose the number of compute threads; only effective before the pool is first used.
pub fn set_threads(n: usize) -> bool {
    THREADS.set(n.max(1)).is_ok()
}

/// The pool (built on first use with `set_threads`' value, or one thread per core).
pub fn pool() -> &'static ThreadPool {
    POOL.get_or_init(|| {
        let n = THREADS
            .get()
            .copied()
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("compute-{i}"))
            .build()
            .unwrap_or_else(|_| {
                ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap_or_else(|e| panic!("cannot start any compute thread: {e}"))
            })
    })
}

/// Threads in the pool.
pub fn threads() -> usize {
    pool().current_num_threads()
}
