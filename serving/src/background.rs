//! Background work at a lower CPU priority than ingest.
//!
//! Export (reading a batch, Parquet encoding, signing) and the embedded
//! storage's checks and writes come in bursts of tenths of a second once
//! per export interval. On the tokio blocking pool they compete with the
//! ingest threads as equals, and on a busy machine every burst shows up in
//! the ingest's ack latency. Here they run on threads of their own with nice
//! +10: the ingest threads preempt them when both want a core, and they
//! still take every idle cycle, so export keeps up whenever the machine is
//! not saturated.
//!
//! Bounds: `threads` threads per pool, and at most [`QUEUE_JOBS_MAX`] jobs
//! waiting; a caller waits (asynchronously) for room.

use tokio::sync::{mpsc, oneshot};

/// Jobs waiting for a pool's threads at most.
pub const QUEUE_JOBS_MAX: usize = 16;

/// The nice value of background threads (ingest runs at the process's, 0).
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A small pool of low-priority threads.
#[derive(Clone)]
pub struct Background {
    /// `None` if no thread could be started: jobs then run on tokio's
    /// blocking pool, at normal priority.
    jobs: Option<mpsc::Sender<Job>>,
}

/// The pool's threads are gone (the process is exiting).
#[derive(Debug, thiserror::Error)]
#[error("the background threads are gone")]
pub struct Gone;

impl Background {
    /// Start `threads` threads named `name`; they end when every handle is
    /// dropped. If not one can be started, jobs run on tokio's blocking pool.
    pub fn start(name: &str, threads: usize) -> Self {
        let (jobs, receiver) = mpsc::channel::<Job>(QUEUE_JOBS_MAX);
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        let mut started = 0;
        for _ in 0..threads.max(1) {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
                lower_priority();
                loop {
                    // One thread waits for a job at a time; the lock is not
                    // held while the job runs.
                    let job = match receiver.lock() {
                        Ok(mut receiver) => receiver.blocking_recv(),
                        Err(_) => None,
                    };
                    let Some(job) = job else { return };
                    // A panicking job must not take the thread with it: its
                    // caller gets `Gone` (the result sender is dropped), and
                    // the next job runs as usual.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a background job panicked; its caller gets an error");
                    }
                }
            });
            match spawned {
                Ok(_) => started += 1,
                Err(error) => tracing::warn!(%error, name, "could not start a background thread"),
            }
        }
        Self {
            jobs: (started > 0).then_some(jobs),
        }
    }

    /// Run `work` on the pool and wait for its result.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Gone> {
        let Some(jobs) = &self.jobs else {
            return tokio::task::spawn_blocking(work).await.map_err(|_| Gone);
        };
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        jobs.send(job).await.map_err(|_| Gone)?;
        result.await.map_err(|_| Gone)
    }
}

/// Give the calling thread (not the process) nice +10. Failure is logged
/// and harmless: the thread then runs at normal priority.
fn lower_priority() {
    // On Linux, nice is per thread: PRIO_PROCESS with a thread id sets that
    // thread's alone.
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), NICE) {
        tracing::warn!(%error, "could not lower a background thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_low_priority_threads_and_return_their_results() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let pool = Background::start("acct-test-bg", 2);
        let (name, nice) = runtime
            .block_on(pool.run(|| {
                let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
                (std::thread::current().name().map(str::to_owned), nice)
            }))
            .unwrap();
        assert_eq!(name.as_deref(), Some("acct-test-bg"));
        assert_eq!(nice, NICE);
        let sum: u64 = runtime.block_on(async {
            let mut total = 0;
            for value in 0..100u64 {
                total += pool.run(move || value * 2).await.unwrap();
            }
            total
        });
        assert_eq!(sum, 9900);
        // A panic is the caller's error, and the pool goes on.
        let single = Background::start("acct-test-bg1", 1);
        let panicked = runtime.block_on(single.run(|| -> u8 { panic!("a job that fails") }));
        assert!(panicked.is_err());
        assert_eq!(runtime.block_on(single.run(|| 7)).unwrap(), 7);
    }
}
