//! Waking fleet members: `LISTEN` on the shared ledger's wake channel, on
//! a connection and a thread of its own, so a task queued on one host
//! (a message, a webhook, an approval's answer) is dispatched by the host
//! running its agent at once rather than at its next poll. Best effort by
//! design: a lost connection is re-made after a pause, and members poll
//! the ledger anyway, so a missed notification delays, never loses, work.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::fleet::WAKE_CHANNEL;
use super::location::PgTarget;

/// How long to wait before listening again after the connection failed.
const RETRY: Duration = Duration::from_secs(1);

/// Listens until `wake` returns false (the supervisor is gone); `wake` is
/// given each notification's payload: an agent's name, or "" when the
/// fleet's membership changed.
pub fn listen(target: PgTarget, wake: impl Fn(String) -> bool + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ledger-listen".into())
        .spawn(move || {
            loop {
                match listen_once(&target, &wake) {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::debug!("listening for fleet wake-ups failed (polling meanwhile): {e}");
                        // Something may have happened while nobody listened.
                        if !wake(String::new()) {
                            return;
                        }
                        std::thread::sleep(RETRY);
                    }
                }
            }
        })?;
    Ok(())
}

/// One connection's worth of listening: Ok when `wake` says stop.
fn listen_once(target: &PgTarget, wake: &impl Fn(String) -> bool) -> Result<(), postgres::Error> {
    let mut client = target.config().connect(postgres::NoTls)?;
    client.batch_execute(&format!("LISTEN {WAKE_CHANNEL}"))?;
    loop {
        let mut notes = client.notifications();
        let mut it = notes.timeout_iter(Duration::from_secs(5));
        loop {
            match it.next() {
                Ok(Some(n)) => {
                    if !wake(n.payload().to_owned()) {
                        return Ok(());
                    }
                }
                // Quiet for a while: is anybody still there to wake?
                Ok(None) => break,
                Err(e) => return Err(e),
            }
        }
        drop(it);
        drop(notes);
        if client.is_closed() {
            client.batch_execute("SELECT 1")?;
        }
    }
}
