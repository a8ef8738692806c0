//! What a tar entry's name means inside an image: a path relative to the rootfs, or a whiteout.
//!
//! Names are cleaned lexically, as containerd and docker do: a leading `/` or `./` is dropped,
//! `.` components vanish and `..` removes the previous component but never climbs above the
//! root. The file system then resolves what remains with `RESOLVE_IN_ROOT`, so symlinks in the
//! middle of a name cannot leave the rootfs either.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// A cleaned path inside the rootfs: no root, no `.`, no `..`; empty means the root itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImagePath(PathBuf);

impl ImagePath {
    /// Clean a raw tar name (bytes; not necessarily UTF-8).
    pub fn clean(raw: &[u8]) -> ImagePath {
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in raw.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                name => parts.push(name),
            }
        }
        let mut path = PathBuf::new();
        for part in parts {
            path.push(OsStr::from_bytes(part));
        }
        ImagePath(path)
    }

    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    /// The directory holding this entry and the entry's own name; `None` for the root.
    pub fn split(&self) -> Option<(&Path, &OsStr)> {
        Some((self.0.parent()?, self.0.file_name()?))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &OsStr) -> ImagePath {
        ImagePath(self.0.join(name))
    }

    /// This path and each of its parents, up to (not including) the root.
    pub fn ancestors(&self) -> impl Iterator<Item = ImagePath> + '_ {
        self.0.ancestors().filter(|p| !p.as_os_str().is_empty()).map(|p| ImagePath(p.to_path_buf()))
    }
}

impl std::fmt::Display for ImagePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0.display())
    }
}

/// What an entry's name asks for.
#[derive(Debug, PartialEq)]
pub enum Target {
    /// Create or replace this path.
    Path(ImagePath),
    /// `.wh.NAME`: delete NAME (from lower layers) in this directory.
    Whiteout { dir: ImagePath, name: OsString },
    /// `.wh..wh..opq`: hide the lower layers' content of this directory.
    Opaque(ImagePath),
    /// A name that can mean nothing safe: `.wh..`, `.wh..`, or `.wh.` alone.
    Invalid(&'static str),
}

impl Target {
    pub fn of(raw: &[u8]) -> Target {
        let path = ImagePath::clean(raw);
        let Some((dir, name)) = path.split() else { return Target::Path(path) };
        let name = name.as_bytes();
        let dir = ImagePath(dir.to_path_buf());
        if name == OPAQUE_MARKER {
            return Target::Opaque(dir);
        }
        match name.strip_prefix(WHITEOUT_PREFIX) {
            None => Target::Path(path),
            Some(b"" | b"." | b"..") => Target::Invalid("a whiteout of '', '.' or '..' names no file"),
            Some(hidden) => Target::Whiteout { dir, name: OsStr::from_bytes(hidden).to_owned() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(raw: &str) -> String {
        ImagePath::clean(raw.as_bytes()).to_string()
    }

    #[test]
    fn names_never_climb_above_the_root() {
        assert_eq!(clean("../../../../tmp/x"), "/tmp/x");
        assert_eq!(clean("/etc/passwd"), "/etc/passwd");
        assert_eq!(clean("./usr//bin/./sh"), "/usr/bin/sh");
        assert_eq!(clean("a/../../b"), "/b");
        assert_eq!(clean("a/b/.."), "/a");
        assert!(ImagePath::clean(b"./").is_root());
        assert!(ImagePath::clean(b"..").is_root());
    }

    #[test]
    fn whiteouts_and_opaque_markers() {
        assert_eq!(
            Target::of(b"etc/.wh.passwd"),
            Target::Whiteout { dir: ImagePath::clean(b"etc"), name: "passwd".into() }
        );
        assert_eq!(Target::of(b"opt/x/.wh..wh..opq"), Target::Opaque(ImagePath::clean(b"opt/x")));
        assert_eq!(Target::of(b".wh..wh..opq"), Target::Opaque(ImagePath::default()));
        assert!(matches!(Target::of(b"a/.wh.."), Target::Invalid(_)));
        assert!(matches!(Target::of(b"../../.wh.x"), Target::Whiteout { .. }));
        assert_eq!(Target::of(b"./bin/sh"), Target::Path(ImagePath::clean(b"bin/sh")));
    }
}
