//! `--write-config`: puts a batch setting into a TorchServe `config.properties` by editing the text of the
//! `models={...}` entry in place, so that every other line, key, comment and the continuation backslashes
//! stay as they were. The entry's JSON is scanned with byte positions (a backslash-newline counts as
//! whitespace, as the properties format reads it), and only the values of `batchSize` and `maxBatchDelay`
//! of the model's versions are replaced, or inserted where missing.

use std::ops::Range;

use thiserror::Error;

use super::management::BatchSetting;

/// The file's `models` entry cannot be edited.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PropertiesError {
    /// The `models` value is not the JSON object TorchServe expects.
    #[error("the models entry is not valid JSON at byte {0}")]
    Json(usize),
    /// The model's entry is not an object of versions.
    #[error("models.{0} is not an object")]
    NotAnObject(String),
}

/// A JSON value with its place in the text.
#[derive(Debug)]
enum Node {
    Object { span: Range<usize>, members: Vec<Member> },
    Scalar { span: Range<usize> },
}

impl Node {
    fn span(&self) -> Range<usize> {
        match self {
            Node::Object { span, .. } | Node::Scalar { span } => span.clone(),
        }
    }
}

#[derive(Debug)]
struct Member {
    key: String,
    key_start: usize,
    value: Node,
}

/// A scanner over `text[pos..end]`.
struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
    end: usize,
}

impl Scanner<'_> {
    fn skip_space(&mut self) {
        while self.pos < self.end {
            match self.text[self.pos] {
                b' ' | b'\t' | b'\r' | b'\n' => self.pos += 1,
                b'\\' if matches!(self.text.get(self.pos + 1), Some(b'\n' | b'\r')) => self.pos += 2,
                _ => break,
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        (self.pos < self.end).then(|| self.text[self.pos])
    }

    fn expect(&mut self, byte: u8) -> Result<(), PropertiesError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(PropertiesError::Json(self.pos))
        }
    }

    fn string(&mut self) -> Result<String, PropertiesError> {
        self.expect(b'"')?;
        let start = self.pos;
        while self.pos < self.end {
            match self.text[self.pos] {
                b'\\' => self.pos += 2,
                b'"' => {
                    let raw = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(String::from_utf8_lossy(raw).into_owned());
                }
                _ => self.pos += 1,
            }
        }
        Err(PropertiesError::Json(start))
    }

    fn value(&mut self) -> Result<Node, PropertiesError> {
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'"') => {
                let start = self.pos;
                self.string()?;
                Ok(Node::Scalar { span: start..self.pos })
            }
            Some(b'[') => {
                let start = self.pos;
                self.pos += 1;
                while self.peek() != Some(b']') {
                    self.value()?;
                    if self.peek() == Some(b',') {
                        self.pos += 1;
                    }
                }
                self.expect(b']')?;
                Ok(Node::Scalar { span: start..self.pos })
            }
            Some(_) => {
                let start = self.pos;
                while self.pos < self.end && !b",}] \t\r\n\\".contains(&self.text[self.pos]) {
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(PropertiesError::Json(start));
                }
                Ok(Node::Scalar { span: start..self.pos })
            }
            None => Err(PropertiesError::Json(self.pos)),
        }
    }

    fn object(&mut self) -> Result<Node, PropertiesError> {
        let start = self.pos;
        self.expect(b'{')?;
        let mut members = Vec::new();
        while self.peek() != Some(b'}') {
            let key_start = self.pos;
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.value()?;
            members.push(Member { key, key_start, value });
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(PropertiesError::Json(self.pos)),
            }
        }
        self.expect(b'}')?;
        Ok(Node::Object { span: start..self.pos, members })
    }
}

/// Where the `models` value is: its byte range, or `None` when the file has no such key.
fn find_models_value(text: &str) -> Option<Range<usize>> {
    let mut offset = 0;
    let mut logical_start: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        let trailing = body.len() - body.trim_end_matches('\\').len();
        let first = *logical_start.get_or_insert(start);
        let is_comment = first == start && body.trim_start().starts_with(['#', '!']);
        if trailing % 2 == 1 && !is_comment {
            continue;
        }
        logical_start = None;
        let logical = &text[first..start + body.len()];
        let Some(after) = logical.trim_start().strip_prefix("models") else { continue };
        let after_space = after.trim_start_matches([' ', '\t']);
        let value = match after_space.strip_prefix(['=', ':']) {
            Some(value) => value,
            // `models {...}` separates with whitespace alone; `models_x=` is another key.
            None if after_space.len() < after.len() => after_space,
            None => continue,
        };
        let value_start = first + logical.len() - value.trim_start_matches([' ', '\t']).len();
        return Some(value_start..first + logical.len());
    }
    None
}

/// The leading whitespace of the line holding byte `at`.
fn indent_at(text: &str, at: usize) -> &str {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    &line[..line.len() - line.trim_start_matches([' ', '\t']).len()]
}

/// Text that inserts `members` (already formatted as `"key": value`) at the top of `object`.
fn insertion(text: &str, object: &Node, members: &[String]) -> (usize, String) {
    let Node::Object { span, members: existing } = object else { return (0, String::new()) };
    let open = span.start;
    let first_content = existing.first().map_or(span.end - 1, |m| m.key_start);
    let multiline = text[open..first_content].contains('\n');
    if !multiline {
        let sep = if existing.is_empty() { "" } else { ", " };
        return (open + 1, format!("{}{sep}", members.join(", ")));
    }
    let line_end = open + text[open..].find('\n').map_or(0, |i| i + 1);
    let indent = match existing.first() {
        Some(m) => indent_at(text, m.key_start).to_string(),
        None => format!("{}  ", indent_at(text, open)),
    };
    let mut out = String::new();
    for (i, member) in members.iter().enumerate() {
        let comma = if i + 1 < members.len() || !existing.is_empty() { "," } else { "" };
        out.push_str(&format!("{indent}{member}{comma}\\\n"));
    }
    (line_end, out)
}

fn setting_members(setting: &BatchSetting) -> [(&'static str, String); 2] {
    [("batchSize", setting.batch_size.to_string()), ("maxBatchDelay", setting.delay_ms_text())]
}

fn new_version_entry(version: &str, setting: &BatchSetting) -> String {
    let [(k1, v1), (k2, v2)] = setting_members(setting);
    format!("\"{version}\": {{\"{k1}\": {v1}, \"{k2}\": {v2}}}")
}

/// Edits for one model inside the parsed `models` object.
fn model_edits(
    text: &str,
    models: &Node,
    model: &str,
    version: Option<&str>,
    setting: &BatchSetting,
) -> Result<Vec<(Range<usize>, String)>, PropertiesError> {
    let Node::Object { members, .. } = models else {
        return Err(PropertiesError::NotAnObject("models".into()));
    };
    let version_name = version.unwrap_or("1.0");
    let Some(entry) = members.iter().find(|m| m.key == model) else {
        let (at, insert) =
            insertion(text, models, &[format!("\"{model}\": {{{}}}", new_version_entry(version_name, setting))]);
        return Ok(vec![(at..at, insert)]);
    };
    let Node::Object { members: versions, .. } = &entry.value else {
        return Err(PropertiesError::NotAnObject(model.into()));
    };
    let targets: Vec<&Member> = versions
        .iter()
        .filter(|v| matches!(v.value, Node::Object { .. }) && version.is_none_or(|name| v.key == name))
        .collect();
    if targets.is_empty() {
        let (at, insert) = insertion(text, &entry.value, &[new_version_entry(version_name, setting)]);
        return Ok(vec![(at..at, insert)]);
    }
    let mut edits = Vec::new();
    for target in targets {
        let Node::Object { members: keys, .. } = &target.value else { continue };
        let mut missing = Vec::new();
        for (key, value) in setting_members(setting) {
            match keys.iter().find(|k| k.key == key) {
                Some(existing) => edits.push((existing.value.span(), value)),
                None => missing.push(format!("\"{key}\": {value}")),
            }
        }
        if !missing.is_empty() {
            let (at, insert) = insertion(text, &target.value, &missing);
            edits.push((at..at, insert));
        }
    }
    Ok(edits)
}

/// Returns `text` with `setting` written into the entry of `model` in `models={...}`: every version, or only
/// `version` (added if missing, as is the model, and the `models` key itself).
///
/// # Errors
/// [`PropertiesError`] when the `models` value is not a JSON object of objects.
pub fn write_batch_setting(
    text: &str,
    model: &str,
    version: Option<&str>,
    setting: &BatchSetting,
) -> Result<String, PropertiesError> {
    let Some(range) = find_models_value(text) else {
        let [(k1, v1), (k2, v2)] = setting_members(setting);
        let version = version.unwrap_or("1.0");
        let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
        return Ok(format!(
            "{text}{sep}models={{\\\n  \"{model}\": {{\\\n    \"{version}\": {{\\\n      \"{k1}\": {v1},\\\n      \
             \"{k2}\": {v2}\\\n    }}\\\n  }}\\\n}}\n"
        ));
    };
    let mut scanner = Scanner { text: text.as_bytes(), pos: range.start, end: range.end };
    let models = scanner.object()?;
    let mut edits = model_edits(text, &models, model, version, setting)?;
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = text.to_string();
    for (range, replacement) in edits {
        out.replace_range(range, &replacement);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SETTING: BatchSetting = BatchSetting { batch_size: 8, max_batch_delay: Duration::from_micros(500) };

    fn models_json(text: &str) -> serde_json::Value {
        let range = find_models_value(text).expect("models");
        let joined = text[range].replace("\\\n", "");
        serde_json::from_str(&joined).expect("valid JSON")
    }

    #[test]
    fn single_line_entries_are_edited_in_place() {
        let text = "a=1\nmodels={\"m\": {\"1.0\": {\"batchSize\": 4, \"minWorkers\": 1}}}\nb=2\n";
        let out = write_batch_setting(text, "m", None, &SETTING).expect("edit");
        assert_eq!(
            out,
            "a=1\nmodels={\"m\": {\"1.0\": {\"maxBatchDelay\": 0.5, \"batchSize\": 8, \"minWorkers\": 1}}}\nb=2\n"
        );
    }

    #[test]
    fn a_missing_model_and_a_missing_models_key_are_added() {
        let text = "models={\"other\": {\"1.0\": {\"batchSize\": 2}}}\n";
        let out = write_batch_setting(text, "m", None, &SETTING).expect("edit");
        let json = models_json(&out);
        assert_eq!(json["m"]["1.0"]["batchSize"], 8);
        assert_eq!(json["other"]["1.0"]["batchSize"], 2);
        let out = write_batch_setting("x=1", "m", Some("2.0"), &SETTING).expect("edit");
        assert!(out.starts_with("x=1\nmodels={\\\n"));
        assert_eq!(models_json(&out)["m"]["2.0"]["maxBatchDelay"], 0.5);
    }

    #[test]
    fn broken_json_is_refused() {
        assert!(write_batch_setting("models={\"m\": {\n", "m", None, &SETTING).is_err());
        assert!(write_batch_setting("models={\"m\": 3}", "m", None, &SETTING).is_err());
    }

    #[test]
    fn comments_that_mention_models_are_left_alone() {
        let text = "# models= are set below \\\nmodels={}\n";
        let out = write_batch_setting(text, "m", None, &SETTING).expect("edit");
        assert!(out.starts_with("# models= are set below \\\nmodels={\"m\": {\"1.0\""));
    }
}
