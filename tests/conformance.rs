//! Keeps `spec/conformance.md` in step with the spec and the scenarios: every MUST sentence of
//! the normative documents carries an anchor, every anchor has exactly one row, and every
//! scenario, vector file and test a row names exists. The map is only worth something if it
//! cannot drift from what it describes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The normative documents: every `spec/*.md` but the change log and the map itself.
fn normative_docs() -> Vec<(String, String)> {
    let dir = root().join("spec");
    let mut docs: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            let skip = name == "CHANGES.md" || name == "conformance.md";
            (!skip).then(|| (name, read(&p)))
        })
        .collect();
    docs.sort();
    docs
}

/// Whether a line starts a new block: a list item, a table row or a heading.
fn starts_block(line: &str) -> bool {
    let t = line.trim_start();
    let numbered = t
        .split_once(". ")
        .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    t.starts_with("- ") || t.starts_with('|') || t.starts_with('#') || numbered
}

/// The text split into sentences: blocks (paragraphs, list items, table rows) outside code
/// fences, cut at table cells and at a full stop followed by a new sentence.
fn sentences(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut fenced = false;
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.trim().is_empty() || starts_block(line) {
            blocks.push(std::mem::take(&mut current));
        }
        current.push(' ');
        current.push_str(line.trim());
    }
    blocks.push(current);
    blocks.iter().flat_map(|b| split_sentences(b)).collect()
}

fn split_sentences(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = block.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '|' {
            out.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
        let next = chars.get(i.saturating_add(1)).copied();
        let after = chars.get(i.saturating_add(2)).copied();
        let new_sentence = after.is_some_and(|a| a.is_ascii_uppercase() || "<[*`\"".contains(a));
        if c == '.' && next == Some(' ') && new_sentence {
            out.push(std::mem::take(&mut current));
        }
    }
    out.push(current);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// The anchor labels (`[M-…]`, `[S-…]`) a piece of text names, defined there or linked.
fn labels_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices('[') {
        let rest = text.get(i.saturating_add(1)..).unwrap_or_default();
        let Some(end) = rest.find(']') else { continue };
        let label = rest.get(..end).unwrap_or_default();
        let well_formed = label
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
        if (label.starts_with("M-") || label.starts_with("S-")) && well_formed {
            out.push(label.to_owned());
        }
    }
    out
}

/// The anchors a document defines: `<a id="ID"></a>[LABEL]`, as (label, id).
fn definitions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("<a id=\"") {
        let rest = text.get(i.saturating_add(7)..).unwrap_or_default();
        let Some((id, after)) = rest.split_once('"') else {
            continue;
        };
        let Some(after) = after.strip_prefix("></a>[") else {
            continue;
        };
        if let Some(label) = labels_in(&format!("[{after}")).first() {
            if after.starts_with(label.as_str()) {
                out.push((label.clone(), id.to_owned()));
            }
        }
    }
    out
}

/// Every sentence with MUST that names no anchor, as "file: sentence".
fn unanchored(docs: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, text) in docs {
        for s in sentences(text) {
            let boilerplate = s.contains("The key words MUST");
            if s.contains("MUST") && !boilerplate && labels_in(&s).is_empty() {
                out.push(format!("{name}: {}", s.trim()));
            }
        }
    }
    out
}

/// One row of the map: its anchor, the link's file and id, and the "checked by" column.
struct Row {
    label: String,
    target: String,
    checked_by: String,
}

fn rows() -> Vec<Row> {
    let text = read(&root().join("spec").join("conformance.md"));
    text.lines()
        .filter(|l| l.starts_with("| ["))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let first = cells.first().copied().unwrap_or_default();
            let label = labels_in(first).into_iter().next().unwrap_or_default();
            let target = first
                .split_once("](")
                .and_then(|(_, t)| t.strip_suffix(')'))
                .unwrap_or_default()
                .to_owned();
            let checked_by = cells.last().copied().unwrap_or_default();
            Row {
                label,
                target,
                checked_by: checked_by.trim_end_matches(" |").to_owned(),
            }
        })
        .collect()
}

/// The backticked names of a "checked by" cell.
fn named(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Which scenarios list each anchor in `covers`.
fn scenario_covers() -> BTreeMap<String, BTreeSet<String>> {
    let dir = root().join("spec").join("scenarios");
    let mut covers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let scenario: Value = serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{e}"));
        let name = scenario["name"].as_str().unwrap_or_default().to_owned();
        for label in scenario["covers"].as_array().into_iter().flatten() {
            let label = label.as_str().unwrap_or_default().to_owned();
            covers.entry(label).or_default().insert(name.clone());
        }
    }
    covers
}

/// Why a name in a "checked by" cell does not exist, if it does not.
fn missing(name: &str) -> Option<String> {
    let root = root();
    if let Some((file, test)) = name.split_once("::") {
        let text = std::fs::read_to_string(root.join(file)).ok()?;
        return (!text.contains(&format!("fn {test}("))).then(|| format!("no fn {test} in {file}"));
    }
    let path = if name.ends_with(".json") {
        root.join("spec").join("vectors").join(name)
    } else if name.contains('/') || name.contains('.') {
        root.join(name)
    } else {
        root.join("spec")
            .join("scenarios")
            .join(format!("{name}.json"))
    };
    (!path.exists()).then(|| format!("{} does not exist", path.display()))
}

#[test]
fn every_must_sentence_names_an_anchor() {
    let bare = unanchored(&normative_docs());
    assert!(
        bare.is_empty(),
        "MUST without an anchor:\n{}",
        bare.join("\n")
    );
}

#[test]
fn every_anchor_is_defined_once_and_has_one_row_pointing_at_it() {
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    let mut referenced = BTreeSet::new();
    for (name, text) in normative_docs() {
        for (label, id) in definitions(&text) {
            let previous = defined.insert(label.clone(), format!("{name}#{id}"));
            assert!(previous.is_none(), "{label} is defined twice");
        }
        referenced.extend(labels_in(&text));
    }
    let undefined: Vec<_> = referenced
        .iter()
        .filter(|l| !defined.contains_key(*l))
        .collect();
    assert!(
        undefined.is_empty(),
        "named but never defined: {undefined:?}"
    );
    let mut seen = BTreeSet::new();
    for row in rows() {
        assert!(seen.insert(row.label.clone()), "two rows for {}", row.label);
        assert_eq!(
            defined.get(&row.label),
            Some(&row.target),
            "{}: row link",
            row.label
        );
    }
    let without_row: Vec<_> = defined.keys().filter(|l| !seen.contains(*l)).collect();
    assert!(
        without_row.is_empty(),
        "anchors without a row: {without_row:?}"
    );
}

#[test]
fn every_check_the_map_names_exists_and_matches_the_scenarios_covers() {
    let covers = scenario_covers();
    let rows = rows();
    assert!(rows.len() >= 60, "only {} rows", rows.len());
    let labels: BTreeSet<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    let unknown: Vec<_> = covers
        .keys()
        .filter(|l| !labels.contains(l.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "scenarios cover anchors the map lacks: {unknown:?}"
    );
    for row in &rows {
        let names = named(&row.checked_by);
        let absent: Vec<String> = names.iter().filter_map(|n| missing(n)).collect();
        assert!(absent.is_empty(), "{}: {absent:?}", row.label);
        let is_scenario = |n: &&String| !n.contains('/') && !n.contains('.') && !n.contains(':');
        let listed: BTreeSet<String> = names.iter().filter(is_scenario).cloned().collect();
        let covering = covers.get(&row.label).cloned().unwrap_or_default();
        assert_eq!(
            listed, covering,
            "{}: the row's scenarios and their covers",
            row.label
        );
    }
}

/// The checks above find what they look for: an unanchored MUST, a defined anchor and a
/// missing scenario are each reported.
#[test]
fn the_checks_catch_what_they_look_for() {
    let doc = "- A side MUST do it. <a id=\"must-x\"></a>[M-X-1] A side MUST NOT do that.\n";
    let bare = unanchored(&[("t.md".into(), doc.into())]);
    assert_eq!(bare, vec!["t.md: - A side MUST do it.".to_owned()]);
    assert_eq!(
        definitions(doc),
        vec![("M-X-1".to_owned(), "must-x".to_owned())]
    );
    assert!(missing("no-such-scenario").is_some());
    assert!(missing("message-credit").is_none());
    assert!(missing("mux-proto/tests/credit.rs::no_such_test").is_some());
}
