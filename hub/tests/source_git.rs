//! Fetching and reading a real repository built with the `git` CLI.

use std::path::Path;
use std::process::Command;

use flotilla_hub::source::{GitCache, SourceError, SourceFile};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Flotilla Test",
            "-c",
            "user.email=test@flotilla.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
            "-c",
            "init.defaultBranch=trunk",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .trim()
        .to_owned()
}

fn write(dir: &Path, path: &str, content: &str) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

fn paths(files: &[SourceFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn fetch_resolve_and_read() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("repo");
    std::fs::create_dir(&work).unwrap();
    // A secret outside the repository that symlinks point at.
    std::fs::write(tmp.path().join("secret.yaml"), "kind: Secret\n").unwrap();

    // The default branch is deliberately neither main nor master, so HEAD
    // must come from the remote's HEAD symref.
    git(&work, &["init", "-q"]);
    write(&work, "apps/a.yaml", "a: 1\n");
    write(&work, "apps/nested/b.yml", "b: 1\n");
    write(&work, "apps/nested/deeper/c.json", "{}\n");
    write(&work, "README.md", "readme\n");
    std::os::unix::fs::symlink(
        tmp.path().join("secret.yaml"),
        work.join("apps/escape.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../../../secret.yaml", work.join("apps/nested/rel.yaml")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let first = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["branch", "release"]);
    git(&work, &["tag", "-a", "v1.0.0", "-m", "release 1"]);
    git(&work, &["tag", "light"]);

    write(&work, "apps/a.yaml", "a: 2\n");
    git(&work, &["commit", "-q", "-am", "second"]);
    let second = git(&work, &["rev-parse", "HEAD"]);
    assert_ne!(first, second);

    let cache = GitCache::new(tmp.path().join("cache"));
    let url = format!("file://{}", work.display());

    assert_eq!(cache.fetch(&url, "HEAD").unwrap(), second);
    assert_eq!(cache.fetch(&url, "").unwrap(), second);
    assert_eq!(cache.fetch(&url, "trunk").unwrap(), second);
    assert_eq!(cache.fetch(&url, "release").unwrap(), first);
    assert_eq!(
        cache.fetch(&url, "v1.0.0").unwrap(),
        first,
        "annotated tag peels to its commit"
    );
    assert_eq!(cache.fetch(&url, "refs/tags/v1.0.0").unwrap(), first);
    assert_eq!(cache.fetch(&url, "light").unwrap(), first);
    assert_eq!(cache.fetch(&url, &first[..8]).unwrap(), first);
    assert_eq!(cache.fetch(&url, &first).unwrap(), first);

    // Not recursive: top-level blobs only.
    let files = cache.read_dir(&url, &second, "apps", false).unwrap();
    assert_eq!(paths(&files), ["a.yaml"]);
    assert_eq!(files[0].content, b"a: 2\n");
    // Recursive, with paths relative to the directory read; no symlinks.
    let files = cache.read_dir(&url, &second, "apps/", true).unwrap();
    assert_eq!(
        paths(&files),
        ["a.yaml", "nested/b.yml", "nested/deeper/c.json"]
    );
    let files = cache.read_dir(&url, &first, "apps", false).unwrap();
    assert_eq!(files[0].content, b"a: 1\n");
    for root in ["", "."] {
        let files = cache.read_dir(&url, &second, root, false).unwrap();
        assert_eq!(paths(&files), ["README.md"], "root {root:?}");
    }

    for (path, want) in [
        ("missing", "does not exist"),
        ("README.md", "is not a directory"),
        ("apps/escape.yaml", "is not a directory"),
        ("apps/../..", ".."),
    ] {
        match cache.read_dir(&url, &second, path, true) {
            Err(SourceError::Path { message, .. }) => {
                assert!(message.contains(want), "{path}: {message}")
            }
            other => panic!("{path}: {other:?}"),
        }
    }

    // A new commit is seen by the next fetch.
    write(&work, "apps/d.yaml", "d: 1\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "third"]);
    let third = git(&work, &["rev-parse", "HEAD"]);
    assert_eq!(cache.fetch(&url, "HEAD").unwrap(), third);
    let files = cache.read_dir(&url, &third, "apps", false).unwrap();
    assert_eq!(paths(&files), ["a.yaml", "d.yaml"]);

    // A force-moved branch follows the remote.
    git(&work, &["branch", "-f", "release", &second]);
    assert_eq!(cache.fetch(&url, "release").unwrap(), second);

    // A plain local path works as well, in its own mirror.
    assert_eq!(
        cache.fetch(&work.display().to_string(), "HEAD").unwrap(),
        third
    );

    for revision in ["no-such-branch", "deadbeef", "v9"] {
        match cache.fetch(&url, revision) {
            Err(SourceError::Revision { revision: r, .. }) => assert_eq!(r, revision),
            other => panic!("{revision}: {other:?}"),
        }
    }
}

#[test]
fn default_branch_fallback_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = GitCache::new(tmp.path().join("cache"));

    let missing = format!("file://{}", tmp.path().join("nope").display());
    match cache.fetch(&missing, "HEAD") {
        Err(err @ SourceError::Fetch { .. }) => eprintln!("{err}"),
        other => panic!("{other:?}"),
    }
    match cache.read_dir(
        &missing,
        "0123456789012345678901234567890123456789",
        "",
        false,
    ) {
        Err(SourceError::Fetch { .. }) => {}
        other => panic!("{other:?}"),
    }

    // A bare remote whose HEAD names a branch that does not exist: HEAD
    // falls back to main.
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    write(&work, "x.yaml", "x: 1\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "x"]);
    let main = git(&work, &["rev-parse", "HEAD"]);
    let bare = tmp.path().join("bare.git");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    git(&bare, &["symbolic-ref", "HEAD", "refs/heads/gone"]);
    let url = format!("file://{}", bare.display());
    assert_eq!(cache.fetch(&url, "HEAD").unwrap(), main);
}

#[test]
fn credentials_never_in_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = GitCache::new(tmp.path());
    // Port 9 on localhost: refused quickly, no outside network needed.
    let url = "https://robot:hunter2secret@127.0.0.1:9/org/repo.git";
    let err = cache.fetch(url, "HEAD").unwrap_err();
    let text = format!("{err} {err:?}");
    eprintln!("{err}");
    assert!(matches!(err, SourceError::Fetch { .. }), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
    assert!(!text.contains("robot"), "{text}");
    assert!(
        text.contains("https://***@127.0.0.1:9/org/repo.git"),
        "{text}"
    );
}

#[test]
fn concurrent_fetches_of_one_url() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("repo");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    write(&work, "a.yaml", "a: 1\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "a"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    let cache = GitCache::new(tmp.path().join("cache"));
    let url = format!("file://{}", work.display());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| cache.fetch(&url, "HEAD")))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), head);
        }
    });
}

#[test]
fn empty_remote_and_vanished_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = GitCache::new(tmp.path().join("cache"));

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    git(&empty, &["init", "-q"]);
    let url = format!("file://{}", empty.display());
    let err = cache.fetch(&url, "HEAD").unwrap_err();
    eprintln!("{err}");
    assert!(
        matches!(
            err,
            SourceError::Fetch { .. } | SourceError::Revision { .. }
        ),
        "{err:?}"
    );

    // Once fetched, a mirror keeps serving its commits when the remote
    // goes away; only new fetches fail.
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    write(&work, "a.yaml", "a: 1\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "a"]);
    let url = format!("file://{}", work.display());
    let head = cache.fetch(&url, "HEAD").unwrap();
    std::fs::remove_dir_all(&work).unwrap();
    let err = cache.fetch(&url, "HEAD").unwrap_err();
    assert!(matches!(err, SourceError::Fetch { .. }), "{err:?}");
    let files = cache.read_dir(&url, &head, "", false).unwrap();
    assert_eq!(paths(&files), ["a.yaml"]);
    match cache.read_dir(&url, "not-hex", "", false) {
        Err(SourceError::Revision { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn commit_outside_branches_and_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("repo");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    write(&work, "a.yaml", "a: 1\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "a"]);
    git(&work, &["checkout", "-q", "-b", "topic"]);
    write(&work, "b.yaml", "b: 1\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "b"]);
    let orphan = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-q", "trunk"]);
    git(&work, &["branch", "-q", "-D", "topic"]);

    let cache = GitCache::new(tmp.path().join("cache"));
    let url = format!("file://{}", work.display());
    let result = cache.fetch(&url, &orphan);
    eprintln!("{result:?}");
    assert_eq!(result.unwrap(), orphan);
    let files = cache.read_dir(&url, &orphan, "", false).unwrap();
    assert_eq!(paths(&files), ["a.yaml", "b.yaml"]);
    // Still there after the next ordinary fetch.
    cache.fetch(&url, "HEAD").unwrap();
    assert_eq!(cache.fetch(&url, &orphan).unwrap(), orphan);

    let unknown = "0123456789abcdef0123456789abcdef01234567";
    match cache.fetch(&url, unknown) {
        Err(SourceError::Revision { .. }) => {}
        other => panic!("{other:?}"),
    }
}
