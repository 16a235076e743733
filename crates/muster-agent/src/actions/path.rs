//! `path` parameters: a value names something strictly inside a root
//! directory, lexically and then on disk.
//!
//! Lexically, a value has no `..` component; a relative value is joined to
//! the root, an absolute one must already be under it, and the result is
//! normalised (`.` components and repeated slashes dropped). It must not be
//! the root itself. On disk, the longest part of the path that exists is
//! resolved (symbolic links followed) and must still lie strictly inside the
//! resolved root, so a link cannot lead out; a link that cannot be resolved is
//! refused. What was checked is what the program gets: the lexically
//! normalised absolute path. (A link created after the check is outside what
//! the agent can vouch for.)

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

/// Checks a `root` setting: present, absolute, with no `..` component.
pub(crate) fn root(root: Option<&str>) -> Result<PathBuf, String> {
    let Some(root) = root else {
        return Err("a path needs \"root\", the directory values must stay inside".into());
    };
    match normalise(root) {
        Ok((true, parts)) => Ok(join(Path::new("/"), &parts)),
        Ok((false, _)) => Err(format!("root {root:?} is not an absolute path")),
        Err(e) => Err(format!("root {root:?} {e}")),
    }
}

/// The absolute path `value` names inside `root`, or why it is refused.
pub(crate) fn check(root: &Path, value: &str) -> Result<String, String> {
    let (absolute, parts) = normalise(value)?;
    let inside = if absolute {
        let root_parts: Vec<_> = root.components().skip(1).collect();
        match parts.strip_prefix(root_parts.as_slice()) {
            Some(rest) => rest.to_vec(),
            None => return Err(format!("is not under {}", root.display())),
        }
    } else {
        parts
    };
    if inside.is_empty() {
        return Err(format!("does not name anything inside {}", root.display()));
    }
    let path = join(root, &inside);
    stays_inside(root, &path)?;
    Ok(path.to_string_lossy().into_owned())
}

/// Whether `path` is absolute, and its normal components; `..` is refused.
fn normalise(value: &str) -> Result<(bool, Vec<Component<'_>>), String> {
    let path = Path::new(value);
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(_) => parts.push(component),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err("has a \"..\" component".into()),
            Component::Prefix(_) => return Err("is not a Unix path".into()),
        }
    }
    Ok((path.has_root(), parts))
}

/// `base` with `parts` appended.
fn join(base: &Path, parts: &[Component<'_>]) -> PathBuf {
    let mut path = base.to_path_buf();
    path.extend(parts);
    path
}

/// Checks that `path`, with symbolic links resolved, is strictly inside
/// `root`, also resolved.
fn stays_inside(root: &Path, path: &Path) -> Result<(), String> {
    let cannot = |e: std::io::Error| format!("cannot be resolved inside {}: {e}", root.display());
    let real_root = resolve(root).map_err(cannot)?;
    let real_path = resolve(path).map_err(cannot)?;
    if real_path != real_root && real_path.starts_with(&real_root) {
        Ok(())
    } else {
        Err(format!("leaves {} through a symbolic link", root.display()))
    }
}

/// `path` with its longest existing ancestor canonicalized and the rest
/// (normal components that do not exist yet) appended.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut existing = path;
    let mut missing = Vec::new();
    loop {
        match std::fs::symlink_metadata(existing) {
            Ok(_) => break,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err(e);
                };
                missing.push(name);
                existing = parent;
            }
            Err(e) => return Err(e),
        }
    }
    let mut real = std::fs::canonicalize(existing)?;
    real.extend(missing.iter().rev());
    Ok(real)
}
