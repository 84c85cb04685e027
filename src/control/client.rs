//! A blocking client for the control socket, used by the CLI.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // The cause is in the message (it is what the user needs), so it is
    // not also chained as a source, which would print it twice.
    #[error("cannot reach agentd at {path}: {cause} (is agentd running with this state dir?)")]
    Connect { path: String, cause: std::io::Error },
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("agentd sent an unreadable response: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("agentd closed the connection without answering")]
    NoAnswer,
}

pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|cause| ClientError::Connect {
        path: socket.display().to_string(),
        cause,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    if reader.read_line(&mut answer)? == 0 {
        return Err(ClientError::NoAnswer);
    }
    Ok(serde_json::from_str(&answer)?)
}
