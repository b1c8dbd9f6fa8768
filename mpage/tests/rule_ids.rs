//! The rule ids the workspace cites (R.., X.., K.., T.., defined in
//! docs/MPAGE.md) all exist there, and every file that cites them names
//! docs/MPAGE.md, so a reader can find them.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root: this crate is `<root>/mpage`.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("mpage has a parent directory")
        .to_path_buf()
}

/// Source and documentation files of the workspace (no build output, no
/// fuzz corpora, no hidden directories).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !(name.starts_with('.') || name == "target" || name == "corpus") {
                files(&path, out);
            }
        } else if name.ends_with(".rs") || name.ends_with(".md") || name.ends_with(".toml") {
            out.push(path);
        }
    }
}

/// The ids cited in `text`: a capital R, X, K or T, digits, and at most
/// one lower-case letter (`T25a`: part (a) of T25), as a whole word.
fn cited(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut ids = BTreeSet::new();
    for i in 0..b.len() {
        if !matches!(b[i], b'R' | b'X' | b'K' | b'T') || (i > 0 && word(b[i - 1])) {
            continue;
        }
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            continue;
        }
        let mut end = i + 1 + digits;
        if end < b.len() && b[end].is_ascii_lowercase() {
            end += 1;
        }
        if end < b.len() && word(b[end]) {
            continue;
        }
        ids.insert(text[i..end].to_string());
    }
    ids
}

/// The ids docs/MPAGE.md defines: its `<a id="r42"></a>` anchors.
fn defined(doc: &str) -> BTreeSet<String> {
    doc.split("<a id=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|id| !id.is_empty())
        .map(|id| {
            let mut s = id[..1].to_uppercase();
            s.push_str(&id[1..]);
            s
        })
        .filter(|id| cited(id).len() == 1)
        .collect()
}

#[test]
fn cited_rule_ids_are_defined_in_docs_mpage_md() {
    let root = root();
    let doc_path = root.join("docs/MPAGE.md");
    let doc = fs::read_to_string(&doc_path).expect("docs/MPAGE.md");
    let defined = defined(&doc);
    assert!(
        ["R1", "R61", "X1", "X6", "K1", "K18", "T1", "T1b", "T28"]
            .iter()
            .all(|id| defined.contains(*id)),
        "docs/MPAGE.md lost its anchors: {defined:?}"
    );

    let mut all = Vec::new();
    files(&root, &mut all);
    let mut missing = Vec::new();
    let mut unnamed = Vec::new();
    let mut citations = 0;
    for path in &all {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ids = cited(&text);
        if ids.is_empty() {
            continue;
        }
        citations += ids.len();
        let rel = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        for id in &ids {
            // `T25a` is part (a) of T25.
            let base = id.trim_end_matches(|c: char| c.is_ascii_lowercase());
            if !defined.contains(id) && !defined.contains(base) {
                missing.push(format!("{rel}: {id}"));
            }
        }
        if *path != doc_path && !text.contains("MPAGE.md") {
            unnamed.push(rel);
        }
    }
    assert!(
        citations > 100,
        "only {citations} citations found: is the scan still looking at the workspace?"
    );
    assert!(
        missing.is_empty(),
        "ids cited but not defined in docs/MPAGE.md: {missing:#?}"
    );
    assert!(
        unnamed.is_empty(),
        "files citing rule ids without naming docs/MPAGE.md: {unnamed:#?}"
    );
}

#[test]
fn the_scanner_finds_ids_and_only_ids() {
    let ids = cited("R4, R13/R36 (K18; T25a, T1b) R1–R61 U64 R(8000, 4096) XR2 R2x2 t01_");
    let want: BTreeSet<String> = ["R4", "R13", "R36", "K18", "T25a", "T1b", "R1", "R61"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(ids, want);
}
