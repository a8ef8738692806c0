//! The host's user and group accounts, looked up without NSS in this process.
//!
//! Release builds of boxrun are linked statically: no dynamic loader runs at each start (0.3
//! to 0.7 ms of every warm start on the bench machine). A static glibc still `dlopen`s the NSS
//! modules that nsswitch.conf names (sss, ldap, systemd), and those need the libc.so they were
//! built with, not the glibc linked into boxrun: glibc's manual warns that this can crash. So
//! boxrun reads /etc/passwd and /etc/group itself, which covers local accounts, and asks
//! `getent` (the host's own tool, with the host's NSS) for the others, such as a cluster's
//! directory accounts. A group name that only `getent` knows is remembered in the user's state
//! directory, so that warm starts do not run it again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The host's `getent`, by its path on every mainstream distribution: no PATH search, and
/// nothing a caller's PATH could stand in for when root looks up a user.
pub const GETENT: &str = "/usr/bin/getent";

/// One passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Which field of an entry a lookup matches.
#[derive(Clone, Copy)]
enum Key<'a> {
    Name(&'a str),
    Id(u32),
}

/// The account of `uid` in /etc/passwd, without asking any directory service.
pub fn local_user(uid: u32) -> Option<Account> {
    find_user(&read_etc("passwd")?, Key::Id(uid))
}

/// The account of `uid`: /etc/passwd, else the host's NSS through `getent`.
pub fn user_by_uid(uid: u32) -> Option<Account> {
    local_user(uid).or_else(|| find_user(&getent("passwd", &uid.to_string())?, Key::Id(uid)))
}

/// The account named `name`: /etc/passwd, else the host's NSS through `getent`.
pub fn user_by_name(name: &str) -> Option<Account> {
    let local = read_etc("passwd").and_then(|text| find_user(&text, Key::Name(name)));
    local.or_else(|| find_user(&getent("passwd", name)?, Key::Name(name)))
}

/// The name of group `gid`: /etc/group, else what an earlier lookup remembered, else the
/// host's NSS through `getent` (then remembered).
pub fn group_name(gid: u32) -> Option<String> {
    if let Some(name) = read_etc("group").and_then(|text| find_group(&text, gid)) {
        return Some(name);
    }
    let memo = crate::state::dir().ok().map(|dir| dir.join(format!("group-{gid}.name")));
    if let Some(name) = memo.as_ref().and_then(|m| fs_err::read_to_string(m).ok()) {
        return Some(name);
    }
    let name = find_group(&getent("group", &gid.to_string())?, gid)?;
    if let Some(memo) = memo {
        remember(&memo, &name);
    }
    Some(name)
}

/// Write `name` to `memo` whole or not at all (a concurrent job may be reading it).
fn remember(memo: &std::path::Path, name: &str) {
    let staged = memo.with_extension(format!("{}.tmp", std::process::id()));
    if fs_err::write(&staged, name).and_then(|()| fs_err::rename(&staged, memo)).is_err() {
        drop(fs_err::remove_file(&staged));
    }
}

fn read_etc(file: &str) -> Option<String> {
    crate::small_file::read_to_string(&Path::new("/etc").join(file)).ok()
}

/// `getent DATABASE KEY`'s output, or None where the host has no such entry or no getent.
fn getent(database: &str, key: &str) -> Option<String> {
    let output = Command::new(GETENT).args([database, key]).stdin(Stdio::null()).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The first passwd line (`name:x:uid:gid:gecos:home:shell`) matching `key`.
fn find_user(text: &str, key: Key) -> Option<Account> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, ..] = fields[..] else {
            return None;
        };
        let uid: u32 = uid.parse().ok()?;
        let matches = match key {
            Key::Name(wanted) => name == wanted,
            Key::Id(wanted) => uid == wanted,
        };
        if !matches {
            return None;
        }
        Some(Account { name: name.into(), uid, gid: gid.parse().ok()?, home: home.into() })
    })
}

/// The name on the first group line (`name:x:gid:members`) with `gid`.
fn find_group(text: &str, gid: u32) -> Option<String> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse() == Ok(gid) && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n# a comment\nbroken\n\
        alice:x:1001:100:Alice A:/home/alice:/bin/sh\nbob:x:1002:1002::/home/bob:\n";

    #[test]
    fn passwd_lines_match_by_uid_or_name_and_skip_what_is_not_an_entry() {
        let alice = Account { name: "alice".into(), uid: 1001, gid: 100, home: "/home/alice".into() };
        assert_eq!(find_user(PASSWD, Key::Id(1001)), Some(alice.clone()));
        assert_eq!(find_user(PASSWD, Key::Name("alice")), Some(alice));
        assert_eq!(find_user(PASSWD, Key::Id(1002)).map(|a| a.home), Some("/home/bob".into()));
        assert_eq!(find_user(PASSWD, Key::Id(7)), None);
        assert_eq!(find_user(PASSWD, Key::Name("broken")), None);
    }

    #[test]
    fn group_lines_match_by_gid() {
        let group = "root:x:0:\nusers:x:100:alice,bob\n:x:5:\nphysics:*:4242:\n";
        assert_eq!(find_group(group, 100).as_deref(), Some("users"));
        assert_eq!(find_group(group, 4242).as_deref(), Some("physics"));
        assert_eq!(find_group(group, 5), None);
        assert_eq!(find_group(group, 9), None);
    }
}
