//! `${VAR}` and `${VAR:-default}` interpolation in scalar values.
//!
//! `$$` escapes a literal dollar. An unset variable without a default is an
//! error; the caller attaches the field and position.

/// Expands references using `lookup`. Returns the message of the first
/// problem (unset variable, unterminated or malformed reference).
pub fn interpolate(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated variable reference in {s:?}"))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("invalid variable name {name:?} in ${{{inner}}}"));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a fallback)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::interpolate;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/a".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_default_and_escape() {
        assert_eq!(interpolate("${HOME}/x", env).unwrap(), "/home/a/x");
        assert_eq!(interpolate("${NOPE:-d}", env).unwrap(), "d");
        assert_eq!(interpolate("${EMPTY:-d}", env).unwrap(), "");
        assert_eq!(interpolate("$$HOME $5", env).unwrap(), "$HOME $5");
        assert_eq!(interpolate("plain", env).unwrap(), "plain");
    }

    #[test]
    fn unset_and_malformed_are_errors() {
        assert!(interpolate("${NOPE}", env).unwrap_err().contains("NOPE is not set"));
        assert!(interpolate("${HOME", env).unwrap_err().contains("unterminated"));
        assert!(interpolate("${1X}", env).unwrap_err().contains("invalid variable"));
    }
}
