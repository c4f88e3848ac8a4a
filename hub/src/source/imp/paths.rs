//! Paths inside a repository (a leaf for `git` and `export`).

/// Whether a symlink at `repo_path` (relative to the repository root) with
/// target `link` resolves inside the repository. Absolute targets never do.
pub(crate) fn symlink_stays_inside(repo_path: &str, link: &str) -> bool {
    if link.is_empty() || link.starts_with('/') || link.starts_with('\\') || link.contains(':') {
        return false;
    }
    // Start from the directory holding the link.
    let mut stack: Vec<&str> = repo_path.split('/').filter(|c| !c.is_empty()).collect();
    stack.pop();
    for part in link.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return false;
                }
            }
            other => stack.push(other),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::symlink_stays_inside;

    #[test]
    fn symlink_targets() {
        let table = [
            ("a/link", "b.yaml", true),
            ("a/link", "../b/c.yaml", true),
            ("a/b/link", "../../x", true),
            ("link", "../x", false),
            ("a/link", "../../x", false),
            ("a/link", "/etc/passwd", false),
            ("a/link", "", false),
            ("a/link", "./../../../etc", false),
            ("a/link", "C:/windows", false),
        ];
        for (path, link, want) in table {
            assert_eq!(symlink_stays_inside(path, link), want, "{path} -> {link}");
        }
    }
}
