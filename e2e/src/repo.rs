//! A configuration repository made with the real `git` CLI from
//! `examples/`, with helpers to commit changes as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A non-bare Git repository in a directory the caller owns.
pub struct ConfigRepo {
    dir: PathBuf,
}

impl ConfigRepo {
    /// Copies `examples/` into `dir`, rewrites every `repoURL:` under
    /// `apps/` to this repository's `file://` URL, and commits it on `main`.
    ///
    /// # Errors
    /// Copying or any git command fails.
    pub fn from_examples(dir: &Path) -> anyhow::Result<Self> {
        let src = crate::workspace_root().join("examples");
        copy_dir(&src, dir)?;
        let repo = Self {
            dir: dir.to_path_buf(),
        };
        let url = repo.url();
        let apps = dir.join("apps");
        if apps.is_dir() {
            for entry in std::fs::read_dir(&apps)? {
                let path = entry?.path();
                let text = std::fs::read_to_string(&path)?;
                let rewritten: Vec<String> = text
                    .lines()
                    .map(|l| match l.find("repoURL:") {
                        Some(i) => format!("{}repoURL: {url}", &l[..i]),
                        None => l.to_owned(),
                    })
                    .collect();
                std::fs::write(&path, rewritten.join("\n") + "\n")?;
            }
        }
        repo.git(&["init", "-q", "-b", "main"])?;
        repo.git(&["add", "-A"])?;
        repo.git(&["commit", "-q", "-m", "initial configuration"])?;
        Ok(repo)
    }

    /// The `file://` URL of this repository.
    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// The working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `content` to `path` (relative) and commits; returns the commit id.
    ///
    /// # Errors
    /// Writing or git fails.
    pub fn commit_file(&self, path: &str, content: &str, message: &str) -> anyhow::Result<String> {
        let full = self.dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, content)?;
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "--allow-empty", "-m", message])?;
        self.head()
    }

    /// Writes every `(path, content)` (relative) and commits them together;
    /// returns the commit id.
    ///
    /// # Errors
    /// Writing or git fails.
    pub fn commit_files(&self, files: &[(&str, &str)], message: &str) -> anyhow::Result<String> {
        for (path, content) in files {
            let full = self.dir.join(path);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&full, content)?;
        }
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "--allow-empty", "-m", message])?;
        self.head()
    }

    /// Removes `path` and commits; returns the commit id.
    ///
    /// # Errors
    /// git fails.
    pub fn remove_file(&self, path: &str, message: &str) -> anyhow::Result<String> {
        self.git(&["rm", "-q", "-r", path])?;
        self.git(&["commit", "-q", "-m", message])?;
        self.head()
    }

    /// Reads a file from the working tree.
    ///
    /// # Errors
    /// The file does not exist.
    pub fn read(&self, path: &str) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.dir.join(path))?)
    }

    /// The current commit id.
    ///
    /// # Errors
    /// git fails.
    pub fn head(&self) -> anyhow::Result<String> {
        Ok(self.git(&["rev-parse", "HEAD"])?.trim().to_owned())
    }

    fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args([
                "-c",
                "user.name=Flotilla Test",
                "-c",
                "user.email=test@flotilla.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn copy_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let target = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
