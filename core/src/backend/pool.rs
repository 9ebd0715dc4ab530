//! The CPU backend's worker threads: a fixed team that runs one job at a time, the calling
//! thread being member 0.
//!
//! A token's forward pass hands the team a couple of hundred short jobs (a matrix product takes
//! tens of microseconds), so the hand-off must cost far less than that. Idle workers spin on an
//! epoch counter for a short while before they sleep on a condition variable; the caller spins
//! until the last worker is done. A general work-stealing pool (rayon) put each worker to sleep
//! and woke it for every product, which cost about a tenth of the decode time.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps between the jobs of one
/// forward pass, far shorter than a person waits between prompts.
const SPIN: Duration = Duration::from_micros(500);

/// A job with its lifetime erased. [`Team::run`] does not return (or unwind) before every
/// worker has finished with it, so the reference never outlives the closure.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the closure is `Sync`, so sharing a pointer to it across threads is sound.
unsafe impl Send for Job {}

struct Shared {
    /// Bumped for every job and on shutdown; workers wait for it to change.
    epoch: AtomicUsize,
    job: Mutex<Option<Job>>,
    /// Workers that have not finished the current job.
    running: AtomicUsize,
    /// A worker's part of the current job panicked.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Workers asleep on `wake`; guarded by `sleep` together with the epoch check.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these locks can be left inconsistent by a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `threads - 1` workers plus the caller.
pub(crate) struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl core::fmt::Debug for Team {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Team {
    /// A team of `threads` (at least 1). Workers that the system refuses to start are left
    /// out, so the team may be smaller than asked.
    pub(crate) fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            running: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for index in 1..threads.max(1) {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("apr-cpu-{index}"))
                .spawn(move || work(&shared, index));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(_) => break,
            }
        }
        Self { shared, workers }
    }

    /// Members, the caller included.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(member)` on every member, `f(0)` on the calling thread, and returns when all are
    /// done. `Err` when a worker's part panicked (the caller's own panic propagates).
    pub(crate) fn run(&self, f: &(dyn Fn(usize) + Sync)) -> Result<(), ()> {
        if self.workers.is_empty() {
            f(0);
            return Ok(());
        }
        let s = &*self.shared;
        // SAFETY: only the lifetime changes. `Finish` below waits for every worker to be done
        // with the job before this function returns or unwinds, so it never dangles.
        let job: &'static (dyn Fn(usize) + Sync) = unsafe { core::mem::transmute(f) };
        *lock(&s.job) = Some(Job(job));
        s.running.store(self.workers.len(), Ordering::Release);
        let sleepers = {
            let _g = lock(&s.sleep);
            s.epoch.fetch_add(1, Ordering::AcqRel);
            s.sleepers.load(Ordering::Acquire)
        };
        if sleepers > 0 {
            s.wake.notify_all();
        }

        struct Finish<'a>(&'a Shared);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                while self.0.running.load(Ordering::Acquire) != 0 {
                    core::hint::spin_loop();
                }
            }
        }
        let finish = Finish(s);
        f(0);
        drop(finish);
        if s.panicked.swap(false, Ordering::AcqRel) {
            Err(())
        } else {
            Ok(())
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::Release);
        {
            let _g = lock(&s.sleep);
            s.epoch.fetch_add(1, Ordering::AcqRel);
        }
        s.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker: wait for a new epoch, run its part of the job, report done.
fn work(s: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let idle = Instant::now();
        let mut spins = 0u32;
        loop {
            let epoch = s.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) || idle.elapsed() < SPIN {
                core::hint::spin_loop();
                continue;
            }
            let mut g = lock(&s.sleep);
            s.sleepers.fetch_add(1, Ordering::AcqRel);
            while s.epoch.load(Ordering::Acquire) == seen {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::AcqRel);
        }
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        let job = *lock(&s.job);
        if let Some(Job(f)) = job {
            // SAFETY: `run` keeps the closure alive until `running` reaches zero, which
            // happens only after this call.
            let f = unsafe { &*f };
            if catch_unwind(AssertUnwindSafe(|| f(index))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_runs_each_job_once() {
        for threads in [1, 2, 4] {
            let team = Team::new(threads);
            assert_eq!(team.threads(), threads);
            for round in 0..200 {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                team.run(&|t| {
                    hits[t].fetch_add(round + 1, Ordering::Relaxed);
                })
                .unwrap();
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == round + 1));
            }
        }
    }

    #[test]
    fn workers_wake_after_sleeping_and_report_panics() {
        let team = Team::new(2);
        std::thread::sleep(SPIN * 4);
        let hit = AtomicUsize::new(0);
        team.run(&|_| {
            hit.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(hit.load(Ordering::Relaxed), 2);
        assert!(
            team.run(&|t| {
                if t == 1 {
                    panic!("worker part fails");
                }
            })
            .is_err()
        );
        // The team still works afterwards.
        team.run(&|_| {
            hit.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(hit.load(Ordering::Relaxed), 4);
    }
}
