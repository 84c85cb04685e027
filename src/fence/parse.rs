//! The fence parser: finds the runnable blocks in a model's reply.
//!
//! Fences follow CommonMark: three or more backticks or tildes open a
//! fence, and only a fence of the same character at least as long closes
//! it, so a ```` ```` ```` fence may carry ```` ``` ```` inside a heredoc. The
//! info string's first word decides what the block is: `LANG:execute`,
//! `PATH:create`, or anything else (text, never run). Unlike CommonMark, an
//! opening fence may be indented by any amount (models indent fences inside
//! list items); its content lines lose up to that much indentation, and a
//! closing fence may be indented at most three columns more than the
//! opening one. Lines may end in CRLF; the CR is dropped.
//!
//! Outside fences, `<invoke name="bash:execute">` elements with
//! `<parameter name="…">` children are blocks too (parameter values are
//! taken verbatim: models do not escape code).
//!
//! The parser is total: any input gives a list of blocks, never a panic
//! (a property test holds it to that).

use std::fmt;

/// Where a block is in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Byte offsets of the whole block (fence lines or XML element).
    pub start: usize,
    pub end: usize,
    /// 1-based line of `start`.
    pub line: usize,
}

/// A language a block can be executed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Bash,
    Sh,
    Python,
}

impl Lang {
    fn parse(s: &str) -> Option<Lang> {
        Some(match s {
            "bash" => Lang::Bash,
            "sh" => Lang::Sh,
            "python" | "python3" => Lang::Python,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Lang::Bash => "bash",
            Lang::Sh => "sh",
            Lang::Python => "python",
        }
    }

    /// The interpreter command line for `code`.
    pub fn argv(self, code: &str) -> Vec<String> {
        let interp = match self {
            Lang::Bash => "bash",
            Lang::Sh => "sh",
            Lang::Python => "python3",
        };
        vec![interp.to_string(), "-c".to_string(), code.to_string()]
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One block of a reply, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Run `code` in the sandbox.
    Execute { lang: Lang, code: String, span: Span },
    /// Write `content` to `path` (relative to the workdir; checked when run).
    Create { path: String, content: String, span: Span },
    /// An actionable fence or `<invoke>` that never closed: reported to the
    /// model, never run (the model's reply was probably cut off).
    Unclosed { tag: String, span: Span },
    /// An actionable block that cannot be run as written.
    Invalid { tag: String, reason: String, span: Span },
}

impl Block {
    pub fn span(&self) -> Span {
        match self {
            Block::Execute { span, .. }
            | Block::Create { span, .. }
            | Block::Unclosed { span, .. }
            | Block::Invalid { span, .. } => *span,
        }
    }

    /// How the block was tagged, e.g. `bash:execute` or `notes.md:create`.
    pub fn tag(&self) -> String {
        match self {
            Block::Execute { lang, .. } => format!("{lang}:execute"),
            Block::Create { path, .. } => format!("{path}:create"),
            Block::Unclosed { tag, .. } | Block::Invalid { tag, .. } => tag.clone(),
        }
    }
}

/// What an info string or invoke name asks for.
enum Action {
    Execute(Result<Lang, String>),
    Create(String),
}

fn action(tag: &str) -> Option<Action> {
    if let Some(lang) = tag.strip_suffix(":execute") {
        return Some(Action::Execute(Lang::parse(lang).ok_or_else(|| lang.to_string())));
    }
    tag.strip_suffix(":create").map(|p| Action::Create(p.to_string()))
}

/// Parses `text` into its runnable blocks, in document order.
pub fn parse(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut pos = 0;
    let mut line_no = 1;
    while pos < text.len() {
        let at_line_start = pos == 0 || text.as_bytes().get(pos - 1) == Some(&b'\n');
        let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1);
        if at_line_start && let Some(open) = opening_fence(&text[pos..line_end]) {
            let (block, next, lines) = fence(text, pos, line_end, line_no, &open);
            blocks.extend(block);
            pos = next;
            line_no += lines;
            continue;
        }
        // Scan this line for `<invoke` markers; each text search below
        // starts where the previous one stopped, so parsing stays linear.
        let mut search = pos;
        let mut element_end = None;
        while let Some(i) = text[search..line_end].find("<invoke") {
            let start = search + i;
            if let Some((block, end)) = invoke(text, start, line_no) {
                blocks.push(block);
                element_end = Some(end);
                break;
            }
            // Not an element after all: it stays text.
            search = start + "<invoke".len();
        }
        if let Some(end) = element_end {
            line_no += text[pos..end].matches('\n').count();
            pos = end;
            continue;
        }
        line_no += 1;
        pos = line_end;
    }
    blocks
}

struct OpenFence<'a> {
    indent: usize,
    ch: u8,
    len: usize,
    info: &'a str,
}

fn strip_eol(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

fn indentation(line: &str) -> usize {
    line.bytes().take_while(|b| *b == b' ' || *b == b'\t').count()
}

fn opening_fence(line: &str) -> Option<OpenFence<'_>> {
    let line = strip_eol(line);
    let indent = indentation(line);
    let rest = &line[indent..];
    let ch = *rest.as_bytes().first()?;
    if ch != b'`' && ch != b'~' {
        return None;
    }
    let len = rest.bytes().take_while(|b| *b == ch).count();
    if len < 3 {
        return None;
    }
    let info = rest[len..].trim();
    // CommonMark: a backtick fence's info string has no backticks
    // (otherwise it is inline code such as ```foo``` on one line).
    if ch == b'`' && info.contains('`') {
        return None;
    }
    Some(OpenFence { indent, ch, len, info })
}

fn is_closing(line: &str, open: &OpenFence<'_>) -> bool {
    let line = strip_eol(line);
    let indent = indentation(line);
    if indent > open.indent + 3 {
        return false;
    }
    let rest = &line[indent..];
    let len = rest.bytes().take_while(|b| *b == open.ch).count();
    len >= open.len && rest[len..].trim().is_empty()
}

/// Removes up to `n` leading spaces/tabs, as CommonMark does for content
/// of an indented fence.
fn dedent(line: &str, n: usize) -> &str {
    let k = indentation(line).min(n);
    &line[k..]
}

/// Reads one fence starting at `start` whose opening line ends at
/// `body_start`. Returns the block (if actionable), where scanning goes on,
/// and how many lines were consumed.
fn fence(
    text: &str,
    start: usize,
    body_start: usize,
    line_no: usize,
    open: &OpenFence<'_>,
) -> (Option<Block>, usize, usize) {
    let tag = open.info.split_whitespace().next().unwrap_or("");
    let mut content = String::new();
    let mut pos = body_start;
    let mut lines = 1;
    let mut closed_at = None;
    while pos < text.len() {
        let end = text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1);
        let line = &text[pos..end];
        lines += 1;
        if is_closing(line, open) {
            closed_at = Some(end);
            pos = end;
            break;
        }
        content.push_str(dedent(strip_eol(line), open.indent));
        content.push('\n');
        pos = end;
    }
    let span = Span {
        start,
        end: closed_at.unwrap_or(text.len()),
        line: line_no,
    };
    let Some(action) = action(tag) else {
        return (None, pos, lines);
    };
    let block = match (closed_at, action) {
        (None, _) => Block::Unclosed {
            tag: tag.to_string(),
            span,
        },
        (Some(_), Action::Execute(Ok(lang))) => Block::Execute {
            lang,
            code: content,
            span,
        },
        (Some(_), Action::Execute(Err(lang))) => Block::Invalid {
            tag: tag.to_string(),
            reason: unknown_lang(&lang),
            span,
        },
        (Some(_), Action::Create(path)) if path.is_empty() => Block::Invalid {
            tag: tag.to_string(),
            reason: "`:create` needs a path, e.g. ```notes/todo.md:create".to_string(),
            span,
        },
        (Some(_), Action::Create(path)) => Block::Create { path, content, span },
    };
    // A fence that runs to the end of the text consumed every line.
    (Some(block), pos, lines)
}

fn unknown_lang(lang: &str) -> String {
    format!("unknown language {lang:?}: use bash, sh or python")
}

/// Parses an `<invoke name="…">…</invoke>` element at `start`. `None` when
/// the text there is not an element at all (so it stays text).
fn invoke(text: &str, start: usize, line: usize) -> Option<(Block, usize)> {
    let after = start + "<invoke".len();
    let (name, mut pos) = open_tag(text, after)?;
    let mut params: Vec<(String, String)> = Vec::new();
    let unclosed = |tag: &str| {
        (
            Block::Unclosed {
                tag: tag.to_string(),
                span: Span {
                    start,
                    end: text.len(),
                    line,
                },
            },
            text.len(),
        )
    };
    // Where the element ends; found again only if a parameter value
    // swallowed it (a value may quote `</invoke>`).
    let mut close = text[pos..].find("</invoke>").map(|c| pos + c);
    loop {
        if close.is_some_and(|c| c < pos) {
            close = text[pos..].find("</invoke>").map(|c| pos + c);
        }
        let next_param = text[pos..].find("<parameter").map(|p| pos + p);
        match (next_param, close) {
            (Some(p), c) if c.is_none_or(|c| p < c) => {
                let p_after = p + "<parameter".len();
                let Some((pname, vstart)) = open_tag(text, p_after) else {
                    pos = p_after;
                    continue;
                };
                let Some(vlen) = text[vstart..].find("</parameter>") else {
                    return Some(unclosed(&name));
                };
                params.push((pname, trim_one_newline(&text[vstart..vstart + vlen])));
                pos = vstart + vlen + "</parameter>".len();
            }
            (_, Some(c)) => {
                let end = c + "</invoke>".len();
                let span = Span { start, end, line };
                return Some((invoke_block(&name, &params, span), end));
            }
            (_, None) => return Some(unclosed(&name)),
        }
    }
}

/// Reads ` name="…">` (or single quotes) starting right after an element
/// name. Returns the name attribute and the offset after `>`.
const MAX_TAG_LEN: usize = 1024;

fn open_tag(text: &str, pos: usize) -> Option<(String, usize)> {
    let rest = text.get(pos..)?;
    // The element name must end here (`<invoked` is not `<invoke`).
    if !rest.starts_with(|c: char| c.is_ascii_whitespace() || c == '>') {
        return None;
    }
    // Attributes are short; not finding `>` soon means this is not a tag
    // (and bounds the work per marker).
    let gt = rest.bytes().take(MAX_TAG_LEN).position(|b| b == b'>')?;
    let attrs = &rest[..gt];
    let name = attr(attrs, "name")?;
    Some((name, pos + gt + 1))
}

fn attr(attrs: &str, key: &str) -> Option<String> {
    let mut rest = attrs;
    while let Some(i) = rest.find(key) {
        let after = rest[i + key.len()..].trim_start();
        if let Some(v) = after.strip_prefix('=') {
            let v = v.trim_start();
            let quote = v.chars().next()?;
            if quote == '"' || quote == '\'' {
                let body = &v[1..];
                let end = body.find(quote)?;
                return Some(body[..end].to_string());
            }
        }
        rest = &rest[i + key.len()..];
    }
    None
}

fn trim_one_newline(v: &str) -> String {
    let v = v.strip_prefix("\r\n").or_else(|| v.strip_prefix('\n')).unwrap_or(v);
    let v = v.strip_suffix("\r\n").or_else(|| v.strip_suffix('\n')).unwrap_or(v);
    v.replace("\r\n", "\n")
}

fn param<'a>(params: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()))
}

fn invoke_block(name: &str, params: &[(String, String)], span: Span) -> Block {
    let invalid = |reason: String| Block::Invalid {
        tag: name.to_string(),
        reason,
        span,
    };
    let action = match action(name) {
        Some(a) => a,
        None if name == "create" => Action::Create(String::new()),
        None => {
            return invalid(format!(
                "unknown invoke name {name:?}: use bash:execute, sh:execute, python:execute or PATH:create"
            ));
        }
    };
    match action {
        Action::Execute(Err(lang)) => invalid(unknown_lang(&lang)),
        Action::Execute(Ok(lang)) => match param(params, &["command", "code"]) {
            Some(code) => Block::Execute {
                lang,
                code: code.to_string(),
                span,
            },
            None => invalid("missing parameter \"command\" (or \"code\")".to_string()),
        },
        Action::Create(from_name) => {
            let path = param(params, &["path"]).map_or(from_name, str::to_string);
            if path.is_empty() {
                return invalid("missing parameter \"path\"".to_string());
            }
            match param(params, &["content"]) {
                Some(content) => Block::Create {
                    path,
                    content: content.to_string(),
                    span,
                },
                None => invalid("missing parameter \"content\"".to_string()),
            }
        }
    }
}
