//! A small, error-collecting decoder over span-keeping YAML nodes.
//!
//! serde stops at the first error; a user fixing a config wants them all. So
//! each mapping is opened with the list of keys it accepts ([`Map::open`]),
//! unknown keys are reported with a "did you mean" suggestion, and every
//! getter records its problem in [`Cx`] and returns `None` instead of
//! failing, letting decoding go on to find the next problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, Node, Span};

use super::error::Error;
use super::interp::interpolate;
use super::units;

/// Decoding context for one file: where errors go and how `${VAR}` resolves.
pub struct Cx<'e> {
    pub file: PathBuf,
    pub errors: &'e mut Vec<Error>,
    pub env: &'e dyn Fn(&str) -> Option<String>,
}

impl Cx<'_> {
    pub fn error_at(&mut self, span: &Span, path: &str, message: impl Into<String>) {
        let (line, column) = span.start().map(|m| (m.line(), m.column())).unwrap_or((0, 0));
        self.errors.push(Error {
            file: self.file.clone(),
            line,
            column,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub fn error_at_node(&mut self, node: &Node, path: &str, message: impl Into<String>) {
        self.error_at(node.span(), path, message)
    }

    /// A scalar's text, `${VAR}`-interpolated; a type error for anything else.
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match node {
            Node::Scalar(s) => self.interp(s, path),
            other => {
                self.error_at_node(other, path, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    fn interp(&mut self, s: &MarkedScalarNode, path: &str) -> Option<String> {
        match interpolate(s.as_str(), self.env) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.error_at(s.span(), path, msg);
                None
            }
        }
    }

    pub fn non_empty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error_at_node(node, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        let s = self.string(node, path)?;
        match s.as_str() {
            "true" | "yes" | "on" => Some(true),
            "false" | "no" | "off" => Some(false),
            _ => {
                self.error_at_node(node, path, format!("expected true or false, found {s:?}"));
                None
            }
        }
    }

    pub fn number<T: std::str::FromStr>(&mut self, node: &Node, path: &str, what: &str) -> Option<T> {
        let s = self.string(node, path)?;
        match s.trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error_at_node(node, path, format!("expected {what}, found {s:?}"));
                None
            }
        }
    }

    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let s = self.string(node, path)?;
        self.check(node, path, units::parse_duration(&s))
    }

    pub fn size(&mut self, node: &Node, path: &str) -> Option<u64> {
        let s = self.string(node, path)?;
        self.check(node, path, units::parse_size(&s))
    }

    /// Records `Err` at `node` and turns the result into an `Option`.
    pub fn check<T>(&mut self, node: &Node, path: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|msg| self.error_at_node(node, path, msg)).ok()
    }

    /// A sequence's items with their paths; a lone scalar counts as a
    /// one-item list when `allow_single` (e.g. `include: agents/*.yaml`).
    pub fn list<'n>(&mut self, node: &'n Node, path: &str, allow_single: bool) -> Vec<(&'n Node, String)> {
        match node {
            Node::Sequence(seq) => seq
                .iter()
                .enumerate()
                .map(|(i, n)| (n, format!("{path}[{i}]")))
                .collect(),
            Node::Scalar(s) if s.as_str().is_empty() && s.may_coerce() => Vec::new(),
            Node::Scalar(_) if allow_single => vec![(node, path.to_owned())],
            other => {
                self.error_at_node(other, path, format!("expected a list, found {}", kind(other)));
                Vec::new()
            }
        }
    }

    pub fn strings(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let items = self.list(node, path, false);
        let before = self.errors.len();
        let out: Vec<String> = items.into_iter().filter_map(|(n, p)| self.string(n, &p)).collect();
        (self.errors.len() == before).then_some(out)
    }

    /// A mapping of string keys to interpolated string values.
    pub fn string_map(&mut self, node: &Node, path: &str) -> Option<Vec<(String, String)>> {
        let Some(map) = node.as_mapping() else {
            self.error_at_node(node, path, format!("expected a mapping, found {}", kind(node)));
            return None;
        };
        let before = self.errors.len();
        let mut out = Vec::new();
        for (k, v) in map.iter() {
            let p = format!("{path}.{}", k.as_str());
            if let Some(val) = self.string(v, &p) {
                out.push((k.as_str().to_owned(), val));
            }
        }
        (self.errors.len() == before).then_some(out)
    }
}

/// Whether a scalar was written empty (`key:` or `key: ~`): YAML null.
pub fn is_null(node: &Node) -> bool {
    matches!(node, Node::Scalar(s) if s.may_coerce() && matches!(s.as_str(), "" | "~" | "null"))
}

pub fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(s) if is_null(node) && s.may_coerce() => "nothing (null)",
        Node::Scalar(_) => "a scalar",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

/// A mapping opened for decoding with the keys it accepts.
pub struct Map<'n> {
    pub node: &'n MarkedMappingNode,
    pub path: String,
}

impl<'n> Map<'n> {
    /// Opens `node` as a mapping accepting `keys`; reports a type error (and
    /// returns `None`) for anything else, and every unknown key.
    pub fn open(cx: &mut Cx, node: &'n Node, path: &str, keys: &[&str]) -> Option<Map<'n>> {
        let Some(map) = node.as_mapping() else {
            cx.error_at_node(node, path, format!("expected a mapping, found {}", kind(node)));
            return None;
        };
        for (k, _) in map.iter() {
            if !keys.contains(&k.as_str()) {
                let p = join(path, k.as_str());
                let msg = match suggest(k.as_str(), keys) {
                    Some(s) => format!("unknown key {:?}; did you mean {s:?}?", k.as_str()),
                    None => format!("unknown key {:?}; expected one of: {}", k.as_str(), keys.join(", ")),
                };
                cx.error_at(k.span(), &p, msg);
            }
        }
        Some(Map {
            node: map,
            path: path.to_owned(),
        })
    }

    /// The value of `key`, unless absent or written as null.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.node.get_node(key).filter(|n| !is_null(n))
    }

    /// Where the mapping starts, for errors about it as a whole: its first
    /// key (the mapping node's own mark can sit on its first value).
    pub fn start(&self) -> Span {
        self.node
            .iter()
            .next()
            .map(|(k, _)| *k.span())
            .unwrap_or(*self.node.span())
    }

    pub fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// `get` plus a "missing field" error when absent.
    pub fn require(&self, cx: &mut Cx, key: &str) -> Option<&'n Node> {
        let n = self.get(key);
        if n.is_none() {
            cx.error_at(
                &self.start(),
                &self.field(key),
                format!("missing required field {key:?}"),
            );
        }
        n
    }

    pub fn duration(&self, cx: &mut Cx, key: &str) -> Option<Duration> {
        self.get(key).and_then(|n| cx.duration(n, &self.field(key)))
    }

    pub fn size(&self, cx: &mut Cx, key: &str) -> Option<u64> {
        self.get(key).and_then(|n| cx.size(n, &self.field(key)))
    }

    pub fn bool(&self, cx: &mut Cx, key: &str) -> Option<bool> {
        self.get(key).and_then(|n| cx.bool(n, &self.field(key)))
    }

    pub fn number<T: std::str::FromStr>(&self, cx: &mut Cx, key: &str, what: &str) -> Option<T> {
        self.get(key).and_then(|n| cx.number(n, &self.field(key), what))
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The closest accepted key, if one is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Parses YAML text into a node tree. A document may hold a mapping or a
/// list at the top; an empty document is an empty mapping.
pub fn parse(file: &Path, text: &str) -> Result<Node, Error> {
    use marked_yaml::LoaderOptions;
    let opts = || LoaderOptions::default().error_on_duplicate_keys(true);
    let result = match marked_yaml::parse_yaml_with_options(0, text, opts()) {
        Err(LoadError::TopLevelMustBeMapping(_)) => {
            marked_yaml::parse_yaml_with_options(0, text, opts().toplevel_sequence())
        }
        other => other,
    };
    result.map_err(|e| load_error(file, e))
}

fn load_error(file: &Path, e: LoadError) -> Error {
    let (marker, message) = match &e {
        LoadError::ScanError(m, se) => (Some(*m), format!("YAML syntax error: {}", se.info())),
        LoadError::DuplicateKey(d) => (
            d.key.span().start().copied(),
            format!(
                "duplicate key {:?} (first defined at line {})",
                d.key.as_str(),
                d.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
            ),
        ),
        LoadError::UnexpectedAnchor(m) => (Some(*m), "YAML anchors and aliases are not supported".into()),
        LoadError::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".into()),
        LoadError::MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be plain scalars".into()),
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => {
            (Some(*m), "the document must be a mapping or a list".into())
        }
    };
    Error {
        file: file.to_owned(),
        line: marker.map(|m| m.line()).unwrap_or(0),
        column: marker.map(|m| m.column()).unwrap_or(0),
        path: String::new(),
        message,
    }
}
