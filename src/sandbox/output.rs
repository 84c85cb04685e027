//! Capped capture of a child's output: the head and the tail survive.
//!
//! A model reading a build log needs the first lines (what ran) and the
//! last ones (how it ended); the middle of a runaway loop is noise. A
//! [`Capture`] keeps at most `cap` bytes: the first half as they come and a
//! ring of the latest second half, and counts what it dropped. The reader
//! keeps draining after the cap so the child never blocks on a full pipe
//! (it ends at exit or at the timeout).

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug)]
pub struct Capture {
    cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Capture {
    pub fn new(cap: u64) -> Capture {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        Capture {
            cap,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    fn head_cap(&self) -> usize {
        self.cap / 2
    }

    fn tail_cap(&self) -> usize {
        self.cap - self.head_cap()
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_cap().saturating_sub(self.head.len());
        let n = room.min(data.len());
        self.head.extend_from_slice(&data[..n]);
        data = &data[n..];
        if data.is_empty() {
            return;
        }
        let tail_cap = self.tail_cap();
        if data.len() >= tail_cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - tail_cap..]);
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(data);
        }
    }

    /// Bytes dropped from the middle.
    pub fn cut(&self) -> u64 {
        self.total - (self.head.len() + self.tail.len()) as u64
    }

    /// Reads `reader` to EOF (or until this future is dropped).
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => self.push(&buf[..n]),
            }
        }
    }

    /// The text, with a note where bytes were cut. Invalid UTF-8 is
    /// replaced, never an error: the model must see *something*.
    pub fn into_text(self) -> (String, bool) {
        let cut = self.cut();
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if cut > 0 {
            text.push_str(&format!(
                "\n[… agentd cut {cut} bytes of output here; {} bytes total …]\n",
                self.total
            ));
        }
        let (a, b) = self.tail.as_slices();
        let mut tail = Vec::with_capacity(a.len() + b.len());
        tail.extend_from_slice(a);
        tail.extend_from_slice(b);
        text.push_str(&String::from_utf8_lossy(&tail));
        (text, cut > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut c = Capture::new(10);
        c.push(b"hello");
        assert_eq!(c.into_text(), ("hello".to_string(), false));
    }

    #[test]
    fn long_output_keeps_head_and_tail_with_a_note() {
        let mut c = Capture::new(10);
        for chunk in [&b"01234"[..], b"abcdefgh", b"XYZ", b"vwxyz"] {
            c.push(chunk);
        }
        let (text, truncated) = c.into_text();
        assert!(truncated);
        assert!(text.starts_with("01234\n[… agentd cut 11 bytes"), "{text}");
        assert!(text.ends_with("vwxyz"), "{text}");
    }

    #[test]
    fn one_huge_chunk_keeps_its_end() {
        let mut c = Capture::new(4);
        c.push(b"abcdefghij");
        let (text, _) = c.into_text();
        assert!(text.starts_with("ab\n"));
        assert!(text.ends_with("ij"));
    }
}
