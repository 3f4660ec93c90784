//! Worker threads that do not end before the process does.
//!
//! Ending a thread frees memory a workload's report does not count, and
//! differently per C library: glibc DONTNEEDs the unused part of the
//! thread's stack (a real `madvise` call of the process, which ptwatch
//! rightly counts), musl's join unmaps the whole stack and may free its
//! page tables. Workers started here hand their result over and park until
//! the process exits: what they hold then goes with `exit`, and the
//! report's counts are the process's, exactly, whatever libc it links.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::{Arc, Barrier, Mutex, PoisonError},
    thread,
};

use anyhow::{anyhow, Result};

/// Run `work` on `threads` threads at once and return each one's result
/// (in the order they finished) once all are done; the threads stay parked.
///
/// The slots for the results are allocated before the first worker is
/// spawned, and filling them allocates nothing: a caller whose workers must
/// not see the heap change while they run (`churn`, whose munmaps would
/// then count an allocator's table) holds them at a barrier of its own
/// until every thread is spawned.
pub fn run_parked<T, F>(threads: usize, work: F) -> Vec<Result<T>>
where
    T: Send + 'static,
    F: Fn() -> Result<T> + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let done = Arc::new(Barrier::new(threads + 1));
    let slots: Arc<Mutex<Vec<Result<T>>>> = Arc::new(Mutex::new(Vec::with_capacity(threads)));
    for _ in 0..threads {
        let (work, done, slots) = (Arc::clone(&work), Arc::clone(&done), Arc::clone(&slots));
        thread::spawn(move || {
            // A panic must still reach the barrier, or the caller would wait
            // for ever.
            let result =
                panic::catch_unwind(AssertUnwindSafe(|| work())).unwrap_or_else(|_| Err(anyhow!("a worker panicked")));
            slots.lock().unwrap_or_else(PoisonError::into_inner).push(result);
            done.wait();
            loop {
                thread::park();
            }
        });
    }
    done.wait();
    let mut slots = slots.lock().unwrap_or_else(PoisonError::into_inner);
    std::mem::take(&mut *slots)
}
