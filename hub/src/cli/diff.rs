//! `flotilla app diff`: live against desired, as unified diffs of YAML.
//!
//! The live object is first reduced to the fields the desired object sets
//! (what Flotilla manages), so server defaults, status and bookkeeping do
//! not show up as differences.

use serde_json::{Map, Value};

/// `live` restricted to the shape of `desired`: object fields desired does
/// not set are dropped (recursively); lists of equal length are projected
/// item by item; anything else is taken as it is.
pub fn project(live: &Value, desired: &Value) -> Value {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => {
            let mut out = Map::new();
            for (k, dv) in d {
                if let Some(lv) = l.get(k) {
                    out.insert(k.clone(), project(lv, dv));
                }
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(d)) if l.len() == d.len() => {
            Value::Array(l.iter().zip(d).map(|(lv, dv)| project(lv, dv)).collect())
        }
        _ => live.clone(),
    }
}

/// Operations of a line diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Del,
    Add,
}

/// Line edit script by longest common subsequence (objects are small).
fn script<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(Op, &'a str)> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((Op::Same, a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Deletions before additions, as diff(1) prints them.
            out.push((Op::Del, a[i]));
            i += 1;
        } else {
            out.push((Op::Add, b[j]));
            j += 1;
        }
    }
    out
}

/// A unified diff of `old` and `new` with 3 lines of context; empty when
/// they are equal.
pub fn unified(old_name: &str, new_name: &str, old: &str, new: &str) -> String {
    const CONTEXT: usize = 3;
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = script(&a, &b);
    if ops.iter().all(|(op, _)| *op == Op::Same) {
        return String::new();
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    // Positions (in ops) of changes, grouped into hunks.
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| *op != Op::Same)
        .map(|(i, _)| i)
        .collect();
    let mut k = 0;
    while k < changes.len() {
        let start = changes[k].saturating_sub(CONTEXT);
        let mut end = changes[k];
        while k + 1 < changes.len() && changes[k + 1] <= end + 2 * CONTEXT + 1 {
            k += 1;
            end = changes[k];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        // Line numbers at the hunk start.
        let (mut la, mut lb) = (1, 1);
        for (op, _) in &ops[..start] {
            match op {
                Op::Same => {
                    la += 1;
                    lb += 1;
                }
                Op::Del => la += 1,
                Op::Add => lb += 1,
            }
        }
        let hunk = &ops[start..end];
        let ca = hunk.iter().filter(|(op, _)| *op != Op::Add).count();
        let cb = hunk.iter().filter(|(op, _)| *op != Op::Del).count();
        out.push_str(&format!("@@ -{la},{ca} +{lb},{cb} @@\n"));
        for (op, line) in hunk {
            let sign = match op {
                Op::Same => ' ',
                Op::Del => '-',
                Op::Add => '+',
            };
            out.push(sign);
            out.push_str(line);
            out.push('\n');
        }
        k += 1;
    }
    out
}

/// YAML text of a value for diffing.
pub fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projection_keeps_only_managed_fields() {
        let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"replicas": 3, "ports": [{"port": 80}]}});
        let live = json!({"metadata": {"name": "a", "labels": {"x": "2"}, "uid": "u", "resourceVersion": "9"},
            "spec": {"replicas": 1, "ports": [{"port": 80, "protocol": "TCP"}], "strategy": {}},
            "status": {"ready": 1}});
        assert_eq!(
            project(&live, &desired),
            json!({"metadata": {"name": "a", "labels": {"x": "2"}},
                "spec": {"replicas": 1, "ports": [{"port": 80}]}})
        );
    }

    #[test]
    fn unified_diff_shows_only_changed_lines_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\ni\nj\n";
        let d = unified("live", "desired", old, new);
        assert_eq!(
            d,
            "--- live\n+++ desired\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
        assert_eq!(unified("a", "b", old, old), "");
        // Far-apart changes make two hunks; additions at the end.
        let new = "A\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n";
        let d = unified("l", "d", old, new);
        assert_eq!(d.matches("@@ ").count(), 2, "{d}");
        assert!(d.contains("-a\n+A\n") && d.contains("+k\n"), "{d}");
        // Missing object: everything added.
        let d = unified("l", "d", "", "x: 1\n");
        assert!(d.contains("@@ -1,0 +1,1 @@\n+x: 1\n"), "{d}");
    }
}
