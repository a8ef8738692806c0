//! Whole small files (the config, an image record, the host's /etc/passwd, /etc/hosts) read in
//! as few syscalls as they allow: open, read until end of file, close.
//!
//! `std::fs::read` asks the file's size twice and its offset once on top of that (statx,
//! statx, lseek): three syscalls per file, six files on every warm start. Errors name the path,
//! as fs_err's do.

use std::io::{self, Read};
use std::path::Path;

/// Bytes read into the stack before any allocation: more than any of the files above holds on
/// most hosts.
const FIRST_READ: usize = 8192;

/// The file's bytes, in a vector of their exact length: the start keeps several of these alive
/// at once, and an 8 KiB vector each grew the heap by seven pages a start.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = fs_err::File::open(path)?;
    let mut first = [0; FIRST_READ];
    let mut len = 0;
    while len < first.len() {
        match file.read(&mut first[len..]) {
            Ok(0) => return Ok(first[..len].to_vec()),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Longer than the first read: std reads the rest (asking the size is worth it here).
    let mut bytes = first.to_vec();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The file's text; not UTF-8 is an `InvalidData` error, as with `std::fs::read_to_string`.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_longer_than_the_first_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let text: String = (0..3 * FIRST_READ).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        fs_err::write(&path, &text).unwrap();
        assert_eq!(read_to_string(&path).unwrap(), text);
        fs_err::write(&path, "").unwrap();
        assert_eq!(read(&path).unwrap(), b"");
    }

    #[test]
    fn says_what_std_says_of_a_missing_or_binary_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let path = dir.path().join("binary");
        fs_err::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(read_to_string(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
