//! The ledger on its own thread, so SQLite's blocking I/O never stalls the
//! supervisor's event loop. Jobs are closures run in the order they were
//! sent; [`LedgerThread::run`] and [`LedgerThread::call`] return a job's
//! result through a oneshot channel, [`LedgerThread::submit`] does not wait.

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;

use crate::ledger::{Ledger, LedgerError};

type Job = Box<dyn FnOnce(&mut Ledger) + Send>;

#[derive(Clone)]
pub struct LedgerThread {
    tx: std::sync::mpsc::Sender<Job>,
}

impl LedgerThread {
    /// `took`: observes how long each job held the ledger.
    pub fn start(mut ledger: Ledger, took: Histogram) -> std::io::Result<LedgerThread> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("ledger".into()).spawn(move || {
            while let Ok(job) = rx.recv() {
                let started = std::time::Instant::now();
                job(&mut ledger);
                took.observe(started.elapsed().as_secs_f64());
            }
            // Every handle is gone: fold the WAL back before closing.
            if let Err(e) = ledger.checkpoint() {
                tracing::warn!("ledger checkpoint on close failed: {e}");
            }
        })?;
        Ok(LedgerThread { tx })
    }

    /// Runs `f` on the ledger thread without waiting for it (after every
    /// job sent before it); false when the thread is gone.
    pub fn submit(&self, f: impl FnOnce(&mut Ledger) + Send + 'static) -> bool {
        self.tx.send(Box::new(f)).is_ok()
    }

    /// Runs `f` on the ledger thread and waits for what it returns;
    /// [`LedgerError::Closed`] when the thread is gone.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ledger) -> T + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |l| {
            let _ = reply.send(f(l));
        });
        self.tx.send(job).map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)
    }

    /// Runs a fallible ledger operation on the ledger thread: one `Result`,
    /// whose error is the operation's or [`LedgerError::Closed`].
    pub async fn call<T: Send + 'static, E: From<LedgerError> + Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ledger) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        self.run(f).await.map_err(E::from)?
    }
}
