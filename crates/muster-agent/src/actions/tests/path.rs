//! The `path` rule on a real tree: symbolic links must not lead out of the root.

use std::os::unix::fs::symlink;
use std::path::Path;

use super::*;

/// An action `backup` whose `dir` parameter must stay inside `root`.
fn backup_into(root: &Path) -> ActionSet {
    set(&format!(
        "[actions.backup]\nargv = [\"/bin/backup\", \"{{dir}}\"]\n\
         [actions.backup.params.dir]\ntype = \"path\"\nroot = {:?}\n",
        root.to_str().unwrap()
    ))
}

fn resolved_dir(set: &ActionSet, value: &str) -> String {
    let resolved =
        resolve(set, "backup", &[("dir", value)]).unwrap_or_else(|e| panic!("{value:?}: {e:?}"));
    resolved.argv[1].clone()
}

#[test]
fn a_symlink_out_of_the_root_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "x").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("inside")).unwrap();
    symlink(outside.path(), root.join("out")).unwrap();
    symlink(outside.path().join("secret"), root.join("secret")).unwrap();
    symlink("/nonexistent/muster-test", root.join("dangling")).unwrap();
    symlink(&root, root.join("itself")).unwrap();
    let set = backup_into(&root);
    for (value, expected) in [
        ("out", "leaves"),
        ("out/secret", "leaves"),
        ("out/not-yet/created", "leaves"),
        ("secret", "leaves"),
        ("itself", "leaves"),
        ("dangling", "cannot be resolved inside"),
        ("dangling/x", "cannot be resolved inside"),
    ] {
        let message = refused(&set, "backup", "dir", value);
        assert!(message.contains(expected), "{value:?}: {message}");
    }
    let absolute = root.join("out/secret");
    let message = refused(&set, "backup", "dir", absolute.to_str().unwrap());
    assert!(message.contains("through a symbolic link"), "{message}");
}

#[test]
fn links_within_the_root_and_paths_not_created_yet_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("inside")).unwrap();
    symlink(root.join("inside"), root.join("alias")).unwrap();
    let set = backup_into(&root);
    let under = |rest: &str| root.join(rest).to_str().unwrap().to_owned();
    assert_eq!(resolved_dir(&set, "inside"), under("inside"));
    // The lexical path is passed on, not the resolved one.
    assert_eq!(resolved_dir(&set, "alias/new.sql"), under("alias/new.sql"));
    assert_eq!(resolved_dir(&set, "a/b/c"), under("a/b/c"));
    assert_eq!(resolved_dir(&set, &under("inside/x")), under("inside/x"));
}

#[test]
fn a_root_behind_a_symlink_or_not_created_yet_works() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    symlink(&real, &link).unwrap();
    let set = backup_into(&link);
    assert_eq!(
        resolved_dir(&set, "site"),
        link.join("site").to_str().unwrap()
    );
    let missing = dir.path().join("not/yet");
    let set = backup_into(&missing);
    assert_eq!(
        resolved_dir(&set, "site"),
        missing.join("site").to_str().unwrap()
    );
}
