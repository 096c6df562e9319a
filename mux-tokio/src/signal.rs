//! Waiting for the process to be asked to stop, so a server can shut down gracefully
//! (GOAWAY, draining, close 1001) instead of dying with its connections.

use std::fmt;

/// Which request to stop arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownSignal {
    /// SIGTERM (what service managers and container runtimes send). Unix only.
    Terminate,
    /// Ctrl-C: SIGINT on Unix, the console's Ctrl-C event elsewhere.
    Interrupt,
}

impl fmt::Display for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownSignal::Terminate => "SIGTERM",
            ShutdownSignal::Interrupt => "Ctrl-C",
        })
    }
}

/// Completes when the process receives SIGTERM or Ctrl-C, and says which. Both handlers are
/// installed when this is first polled; an error means one could not be installed.
///
/// Race it with the server's work and then call
/// [`ServerHandle::shutdown`](crate::ServerHandle::shutdown):
///
/// ```no_run
/// # async fn example(handle: mux_tokio::ServerHandle) -> std::io::Result<()> {
/// let signal = mux_tokio::shutdown_signal().await?;
/// eprintln!("{signal}: shutting down");
/// handle.shutdown(std::time::Duration::from_secs(30)).await;
/// # Ok(())
/// # }
/// ```
pub async fn shutdown_signal() -> std::io::Result<ShutdownSignal> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = terminate.recv() => Ok(ShutdownSignal::Terminate),
            _ = interrupt.recv() => Ok(ShutdownSignal::Interrupt),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok(ShutdownSignal::Interrupt)
    }
}
