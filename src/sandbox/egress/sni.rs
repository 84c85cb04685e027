//! The server name a TLS ClientHello asks for (RFC 8446 §4.1.2, RFC 6066
//! §3): read from the first handshake record, before any byte reaches the
//! upstream, so a tunnel opened for one host cannot carry a handshake for
//! another.

/// What the first bytes of a tunnel are.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not a TLS handshake record at all.
    NotTls,
    /// A handshake record, not complete yet: this many bytes in total.
    Incomplete { need: usize },
    /// A ClientHello with this server name, if it has one.
    ServerName(Option<String>),
    /// A handshake record that is not a parsable ClientHello.
    Malformed,
}

/// Largest record a ClientHello may come in (one TLS record).
pub const MAX_RECORD: usize = 5 + (1 << 14);

pub fn parse(buf: &[u8]) -> Hello {
    if buf.first() != Some(&0x16) {
        return Hello::NotTls;
    }
    if buf.len() < 5 {
        return Hello::Incomplete { need: 5 };
    }
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if 5 + len > MAX_RECORD {
        return Hello::Malformed;
    }
    if buf.len() < 5 + len {
        return Hello::Incomplete { need: 5 + len };
    }
    client_hello(&buf[5..5 + len]).map_or(Hello::Malformed, Hello::ServerName)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| ((b[0] as usize) << 16) | ((b[1] as usize) << 8) | b[2] as usize)
    }
}

/// `Some(None)`: a ClientHello without a server name.
fn client_hello(msg: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(msg);
    if r.u8()? != 1 {
        return None;
    }
    let body = r.u24()?;
    // A hello split over several records is not followed: refused.
    let mut r = Reader(r.take(body)?);
    r.take(2 + 32)?; // version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    if r.0.is_empty() {
        return Some(None);
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if kind == 0 {
            let mut s = Reader(data);
            let list = s.u16()?;
            let mut names = Reader(s.take(list)?);
            while !names.0.is_empty() {
                let name_type = names.u8()?;
                let n = names.u16()?;
                let name = names.take(n)?;
                if name_type == 0 {
                    return Some(Some(String::from_utf8_lossy(name).to_ascii_lowercase()));
                }
            }
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(n) = name {
            let n = n.as_bytes();
            let mut list = vec![0u8];
            list.extend((n.len() as u16).to_be_bytes());
            list.extend(n);
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend(list);
            exts.extend([0, 0]);
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(data);
        }
        let mut body = vec![3, 3];
        body.extend([0u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // null compression
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut msg = vec![1];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend((msg.len() as u16).to_be_bytes());
        rec.extend(msg);
        rec
    }

    #[test]
    fn reads_the_server_name() {
        let h = hello(Some("Example.ORG"));
        assert_eq!(parse(&h), Hello::ServerName(Some("example.org".into())));
        assert_eq!(parse(&hello(None)), Hello::ServerName(None));
        assert_eq!(parse(&h[..10]), Hello::Incomplete { need: h.len() });
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        let mut bad = h.clone();
        bad[5] = 2; // not a ClientHello
        assert_eq!(parse(&bad), Hello::Malformed);
    }
}
