//! Skills: directories of instructions and scripts the model reads and
//! runs when it needs them (the AgentSkills layout: `SKILL.md` with YAML
//! front matter and a Markdown body, plus optional `scripts/`,
//! `references/`, `assets/`).
//!
//! This module owns three things: validating a skill directory's
//! `SKILL.md` ([`parse_skill`], called by [`crate::config`] so `agentd
//! check` reports a bad front matter with its file and line), the index
//! text the system prompt carries ([`index`]: names, descriptions and
//! where each skill lives, never the bodies), and generating one skill per
//! MCP server with Python bindings for its tools ([`generate`]).
//!
//! It must never run code: skills are run by the model, in the sandbox,
//! through code fences. The front matter is decoded with the span-keeping
//! YAML decoder the config uses ([`crate::yaml`]), so its errors read like
//! config errors (`FILE:LINE:COL: field: message`).

pub mod generate;

use std::path::Path;

use marked_yaml::Node;

use crate::config::SkillSpec;
use crate::yaml::{self, Cx, Map, kind, parse};

/// The file that makes a directory a skill.
pub const SKILL_FILE: &str = "SKILL.md";

/// Front matter keys the AgentSkills format defines.
const FRONT_KEYS: &[&str] = &[
    "name",
    "description",
    "license",
    "allowed-tools",
    "metadata",
    "compatibility",
];
/// The format's cap on a description.
const MAX_DESCRIPTION: usize = 1024;

/// Validates `SKILL.md` (`text`, read from `file`) of the skill in `dir`.
/// Every problem is returned, with the line and column in `file`.
pub fn parse_skill(dir: &Path, file: &Path, text: &str) -> Result<SkillSpec, Vec<yaml::Error>> {
    let mut errors = Vec::new();
    let whole_file = |message: String| yaml::Error {
        file: file.to_owned(),
        line: 1,
        column: 1,
        path: String::new(),
        message,
    };
    let Some(front) = front_matter(text) else {
        return Err(vec![whole_file(
            "SKILL.md must start with YAML front matter: a `---` line, `name:` and `description:`, and a closing `---` line"
                .into(),
        )]);
    };
    let root = match parse(file, front) {
        Ok(n) => n,
        Err(mut e) => {
            shift(std::slice::from_mut(&mut e));
            return Err(vec![e]);
        }
    };
    // Front matter is data, not config: no `${VAR}` interpolation.
    let no_env = |_: &str| None;
    let mut cx = Cx {
        file: file.to_owned(),
        errors: &mut errors,
        env: &no_env,
    };
    let skill = decode_front(&mut cx, &root, dir);
    shift(&mut errors);
    match skill {
        Some(s) if errors.is_empty() => Ok(s),
        _ => {
            if errors.is_empty() {
                errors.push(whole_file("invalid front matter".into()));
            }
            Err(errors)
        }
    }
}

/// The front matter text between the opening and closing `---` lines.
fn front_matter(text: &str) -> Option<&str> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text.strip_prefix("---\n").or_else(|| text.strip_prefix("---\r\n"))?;
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some(&rest[..offset]);
        }
        offset += line.len();
    }
    None
}

/// Positions in the front matter are one line above the file's (the
/// opening `---`).
fn shift(errors: &mut [yaml::Error]) {
    for e in errors {
        e.line = if e.line > 0 { e.line + 1 } else { 1 };
    }
}

fn scalar<'n>(cx: &mut Cx, node: &'n Node, path: &str) -> Option<&'n str> {
    match node {
        Node::Scalar(s) => Some(s.as_str()),
        other => {
            cx.error_at_node(other, path, format!("expected a string, found {}", kind(other)));
            None
        }
    }
}

fn decode_front(cx: &mut Cx, root: &Node, dir: &Path) -> Option<SkillSpec> {
    let map = Map::open(cx, root, "", FRONT_KEYS)?;
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = map.require(cx, "name").and_then(|n| {
        let s = scalar(cx, n, "name")?;
        if let Err(msg) = check_name(s) {
            cx.error_at_node(n, "name", msg);
            return None;
        }
        if s != dir_name {
            cx.error_at_node(
                n,
                "name",
                format!("the skill is named {s:?} but its directory is {dir_name:?}; they must match"),
            );
            return None;
        }
        Some(s.to_owned())
    });
    let description = map.require(cx, "description").and_then(|n| {
        let s = scalar(cx, n, "description")?.trim();
        if s.is_empty() {
            cx.error_at_node(
                n,
                "description",
                "must not be empty: say what the skill does and when to use it",
            );
            return None;
        }
        if s.chars().count() > MAX_DESCRIPTION {
            cx.error_at_node(n, "description", format!("longer than {MAX_DESCRIPTION} characters"));
            return None;
        }
        Some(s.to_owned())
    });
    for key in ["license", "allowed-tools", "compatibility"] {
        if let Some(n) = map.get(key) {
            scalar(cx, n, key);
        }
    }
    if let Some(n) = map.get("metadata") {
        match n.as_mapping() {
            Some(m) => {
                for (k, v) in m.iter() {
                    scalar(cx, v, &format!("metadata.{}", k.as_str()));
                }
            }
            None => cx.error_at_node(n, "metadata", format!("expected a mapping, found {}", kind(n))),
        }
    }
    Some(SkillSpec {
        dir: dir.to_owned(),
        name: name?,
        description: description?,
    })
}

/// The format's name rule: 1–64 of `[a-z0-9-]`, no leading, trailing or
/// doubled hyphen.
pub fn check_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid skill name {s:?}: use 1 to 64 characters from [a-z0-9-], without a hyphen at either end or two in a row"
        ))
    }
}

/// The skills part of the system prompt: what each skill is for and where
/// its `SKILL.md` is. Bodies are not included: the model reads them when a
/// task needs one, which keeps every prompt short.
pub fn index(local: &[SkillSpec], generated: &[SkillSpec]) -> String {
    if local.is_empty() && generated.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "# Skills\n\
         Skills are read-only directories with instructions (SKILL.md) and often scripts. When a task \
         matches a skill, first read its SKILL.md (e.g. `cat PATH` in a bash:execute block), then follow it; \
         run its scripts from code blocks by their full path.\n",
    );
    for skill in local {
        push_entry(&mut s, skill);
    }
    if !generated.is_empty() {
        s.push_str(
            "\nYour MCP tools are also callable from code blocks (Python bindings, or \
             `agentd tool call NAME --json ARGS` in bash); each server's SKILL.md says how:\n",
        );
        for skill in generated {
            push_entry(&mut s, skill);
        }
    }
    s
}

fn push_entry(s: &mut String, skill: &SkillSpec) {
    // Descriptions may span lines in YAML; the index keeps one per line.
    let description: String = skill.description.split_whitespace().collect::<Vec<_>>().join(" ");
    s.push_str(&format!(
        "- {}: {} ({})\n",
        skill.name,
        description,
        skill.dir.join(SKILL_FILE).display()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn check(dir: &str, text: &str) -> Result<SkillSpec, Vec<yaml::Error>> {
        let dir = PathBuf::from("/skills").join(dir);
        parse_skill(&dir, &dir.join(SKILL_FILE), text)
    }

    #[test]
    fn a_valid_skill_yields_its_name_and_description() {
        let s = check(
            "notes",
            "---\nname: notes\ndescription: >\n  Keep notes\n  in Markdown.\nlicense: MIT\nmetadata:\n  author: me\n---\n# Notes\n",
        )
        .expect("valid");
        assert_eq!(s.name, "notes");
        assert_eq!(s.description, "Keep notes in Markdown.");
    }

    #[test]
    fn missing_fields_are_reported_with_the_file_line() {
        let errs = check("notes", "---\nlicense: MIT\n---\nbody\n").unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{text:?}");
        assert!(
            text[0].contains("SKILL.md:2:1: name: missing required field"),
            "{text:?}"
        );
        assert!(text[1].contains("description: missing required field"), "{text:?}");
    }

    #[test]
    fn invalid_yaml_and_bad_names_point_at_their_line() {
        let errs = check("notes", "---\nname: notes\ndescription: [unclosed\n---\n").unwrap_err();
        assert!(errs[0].line >= 3, "{errs:?}");
        let errs = check("notes", "---\ndescription: d\nname: Not_Valid\n---\n").unwrap_err();
        assert_eq!(errs[0].line, 3, "{errs:?}");
        assert!(errs[0].message.contains("invalid skill name"), "{errs:?}");
        let errs = check("notes", "---\nname: other\ndescription: d\n---\n").unwrap_err();
        assert!(errs[0].message.contains("must match"), "{errs:?}");
        let errs = check("notes", "# no front matter\n").unwrap_err();
        assert_eq!(errs[0].line, 1);
        let errs = check("notes", "---\nname: notes\ndescription: d\nversion: 2\n---\n").unwrap_err();
        assert!(errs[0].message.contains("unknown key"), "{errs:?}");
    }

    #[test]
    fn the_index_lists_names_descriptions_and_paths_only() {
        let local = vec![SkillSpec {
            dir: "/s/notes".into(),
            name: "notes".into(),
            description: "Keep\nnotes.".into(),
        }];
        let idx = index(&local, &[]);
        assert!(idx.contains("- notes: Keep notes. (/s/notes/SKILL.md)"), "{idx}");
        assert!(index(&[], &[]).is_empty());
    }
}
