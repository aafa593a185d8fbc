//! The path rules that keep every entry, and every symlink, inside the destination.
//!
//! Names are judged as raw bytes, before anything touches the file system: `std::path` would quietly
//! read `/etc` as absolute and `C:\x` as a plain name, and the rules must not depend on such guesses.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The kernel gives up after 40 symlinks in one lookup (Linux `MAXSYMLINKS`); so do we.
const MAX_SYMLINK_HOPS: usize = 40;

/// The relative path an entry name stands for, or why the name is refused.
///
/// `.` and empty components are dropped, so `./a//b/` is `a/b`; the archive root itself (`./`) is the
/// empty path. A backslash is an ordinary byte on Unix, but `..` between backslashes is still refused so
/// that a tree unpacked here cannot climb out when copied to Windows.
pub(super) fn entry_path(name: &[u8]) -> Result<PathBuf, &'static str> {
    reject_rooted(name)?;
    let mut path = PathBuf::new();
    for component in components(name) {
        match component {
            b"" | b"." => continue,
            b".." => return Err("has a `..` component"),
            _ if component.split(|&b| b == b'\\').any(|part| part == b"..") => {
                return Err("has a `..` component between backslashes");
            }
            _ => path.push(OsStr::from_bytes(component)),
        }
    }
    Ok(path)
}

/// Checks, lexically, that `target` seen from the directory of `link` stays inside the root.
pub(super) fn check_symlink_target(link: &Path, target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("is a symlink with an empty target");
    }
    reject_rooted(target).map_err(|_| "is a symlink with an absolute target")?;
    let mut depth = link.parent().map_or(0, |dir| dir.components().count());
    for component in components(target) {
        match component {
            b"" | b"." => {}
            b".." if depth == 0 => return Err("is a symlink whose target leaves the destination"),
            b".." => depth -= 1,
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Follows the symlink `link` (relative to `root`) through every symlink it meets, as the kernel would,
/// and checks each step stays inside `root`.
///
/// The lexical check alone misses chains: with `d/a -> ..`, the link `d/b -> a/..` looks like `d` but
/// resolves to the parent of the root. Components that do not exist are taken lexically, which can only
/// be stricter than the kernel (it would fail the lookup).
pub(super) fn check_symlink_chain(root: &Path, link: &Path) -> io::Result<Result<(), &'static str>> {
    let mut inside: Vec<OsString> = link
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut pending = target_components(&fs::read_link(root.join(link))?);
    let mut hops = 0;
    while let Some(component) = pending.pop_front() {
        match component.as_bytes() {
            b"" | b"." => {}
            b".." => {
                if inside.pop().is_none() {
                    return Ok(Err("is a symlink that leaves the destination through other symlinks"));
                }
            }
            _ => {
                inside.push(component);
                let here = root.join(inside.iter().collect::<PathBuf>());
                if !fs::symlink_metadata(&here).is_ok_and(|m| m.is_symlink()) {
                    continue;
                }
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Ok(Err("is a symlink in a chain that is too long or loops"));
                }
                let target = fs::read_link(&here)?;
                if target.is_absolute() {
                    return Ok(Err("is a symlink that reaches an absolute path through other symlinks"));
                }
                inside.pop();
                let mut expanded = target_components(&target);
                expanded.append(&mut pending);
                pending = expanded;
            }
        }
    }
    Ok(Ok(()))
}

fn target_components(target: &Path) -> VecDeque<OsString> {
    components(target.as_os_str().as_bytes())
        .map(|c| OsStr::from_bytes(c).to_owned())
        .collect()
}

/// Absolute names, and Windows drive (`C:`) and UNC (`\\server`) prefixes, could all land outside.
fn reject_rooted(name: &[u8]) -> Result<(), &'static str> {
    if name.contains(&0) {
        return Err("has a NUL byte");
    }
    match name {
        [b'/', ..] => Err("is an absolute path"),
        [b'\\', ..] => Err("has a Windows UNC or root prefix"),
        [letter, b':', ..] if letter.is_ascii_alphabetic() => Err("has a Windows drive prefix"),
        _ => Ok(()),
    }
}

fn components(name: &[u8]) -> impl Iterator<Item = &[u8]> {
    name.split(|&b| b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_to_relative_paths() {
        for (name, want) in [
            ("a/b/c.txt", "a/b/c.txt"),
            ("./a//b/", "a/b"),
            ("./", ""),
            ("dir\\file", "dir\\file"),
        ] {
            assert_eq!(entry_path(name.as_bytes()).unwrap(), Path::new(want), "{name}");
        }
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        for name in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "C:\\x",
            "c:x",
            "\\\\server\\share\\x",
            "a\\..\\..\\x",
            "a\0b",
        ] {
            assert!(entry_path(name.as_bytes()).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn symlink_targets_are_judged_from_the_links_directory() {
        let ok = [("link", "file"), ("a/link", "../file"), ("a/b/link", "../../c/./d")];
        for (link, target) in ok {
            assert_eq!(check_symlink_target(Path::new(link), target.as_bytes()), Ok(()));
        }
        let refused = [
            ("link", "../file"),
            ("a/link", "../../file"),
            ("a/link", "/tmp"),
            ("link", ""),
            ("link", "C:\\Windows"),
        ];
        for (link, target) in refused {
            assert!(
                check_symlink_target(Path::new(link), target.as_bytes()).is_err(),
                "{link} -> {target}"
            );
        }
    }
}
