//! User and group resolution against an image root: `USER name|uid[:group|gid]`
//! for RUN (with supplementary groups and home directory) and
//! `COPY --chown=user[:group]`. Names are looked up in the root's own
//! `/etc/passwd` and `/etc/group`, opened without following symlinks out of
//! the root.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::exec::run::rootfs;

/// The identity a RUN process takes, resolved from a `USER` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the groups of /etc/group listing the user as a
    /// member when no group was given, none when one was (as runc does).
    pub groups: Vec<u32>,
    /// Home directory from /etc/passwd ("/" when the user has no entry).
    pub home: String,
}

impl RunUser {
    pub fn root() -> Self {
        RunUser {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            home: "/root".into(),
        }
    }
}

/// One line of /etc/passwd.
#[derive(Debug, Clone)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Splits `user[:group]`, rejecting empty parts.
fn split_spec(spec: &str) -> Result<(&str, Option<&str>)> {
    let spec = spec.trim();
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        bail!("invalid user spec {spec:?}: the user part is empty");
    }
    if group == Some("") {
        bail!("invalid user spec {spec:?}: the group part after ':' is empty");
    }
    Ok((user, group))
}

fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Reads a file of the root, or None when it does not exist.
fn read_root_file(root: &Path, path: &str) -> Result<Option<String>> {
    match rootfs::read_in_root(root, path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {path} in {}", root.display())),
    }
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: parse_id(f[2])?,
                gid: parse_id(f[3])?,
                home: f.get(5).copied().unwrap_or("").to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: parse_id(f[2])?,
                members,
            })
        })
        .collect()
}

struct Databases {
    passwd: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
    has_passwd: bool,
    has_group: bool,
}

impl Databases {
    fn load(root: &Path) -> Result<Self> {
        let passwd = read_root_file(root, "/etc/passwd")?;
        let group = read_root_file(root, "/etc/group")?;
        Ok(Databases {
            has_passwd: passwd.is_some(),
            has_group: group.is_some(),
            passwd: passwd.as_deref().map(parse_passwd).unwrap_or_default(),
            groups: group.as_deref().map(parse_group).unwrap_or_default(),
        })
    }

    /// A user by name or number; numbers need no entry.
    fn user(&self, user: &str) -> Result<(u32, Option<&PasswdEntry>)> {
        if let Some(uid) = parse_id(user) {
            return Ok((uid, self.passwd.iter().find(|e| e.uid == uid)));
        }
        match self.passwd.iter().find(|e| e.name == user) {
            Some(e) => Ok((e.uid, Some(e))),
            None if !self.has_passwd => {
                bail!("unable to find user {user}: the image has no /etc/passwd")
            }
            None => bail!("unable to find user {user}: no matching entries in /etc/passwd"),
        }
    }

    fn group(&self, group: &str) -> Result<u32> {
        if let Some(gid) = parse_id(group) {
            return Ok(gid);
        }
        match self.groups.iter().find(|g| g.name == group) {
            Some(g) => Ok(g.gid),
            None if !self.has_group => {
                bail!("unable to find group {group}: the image has no /etc/group")
            }
            None => bail!("unable to find group {group}: no matching entries in /etc/group"),
        }
    }
}

/// Resolves a `USER` value (`name|uid[:group|gid]`) against `root`'s
/// /etc/passwd and /etc/group. A numeric uid without an entry runs with gid 0,
/// as Docker does.
pub fn resolve_user(root: &Path, spec: &str) -> Result<RunUser> {
    let (user, group) = split_spec(spec)?;
    let db = Databases::load(root)?;
    let (uid, entry) = db.user(user)?;
    let home = entry
        .map(|e| e.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into());
    let (gid, groups) = match group {
        Some(g) => (db.group(g)?, Vec::new()),
        None => {
            let gid = entry.map(|e| e.gid).unwrap_or(0);
            let mut groups: Vec<u32> = match entry {
                Some(e) => db
                    .groups
                    .iter()
                    .filter(|g| g.members.contains(&e.name))
                    .map(|g| g.gid)
                    .collect(),
                None => Vec::new(),
            };
            groups.sort_unstable();
            groups.dedup();
            (gid, groups)
        }
    };
    Ok(RunUser {
        uid,
        gid,
        groups,
        home,
    })
}

/// Resolves a `COPY --chown` value (`user[:group]`) to `(uid, gid)`, as
/// BuildKit does: a user name without a group takes its primary group from
/// /etc/passwd; a bare number is used for both uid and gid.
pub fn resolve_chown(root: &Path, spec: &str) -> Result<(u32, u32)> {
    let (user, group) = split_spec(spec)?;
    let db = Databases::load(root)?;
    let (uid, entry) = db.user(user)?;
    let gid = match group {
        Some(g) => db.group(g)?,
        None if parse_id(user).is_some() => uid,
        None => entry.map(|e| e.gid).unwrap_or(uid),
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\nbroken\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nappgrp:x:1001:\nwheel:x:10:app,other\naudio:x:29:app\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn name_gets_primary_and_supplementary_groups() {
        let r = root();
        let u = resolve_user(r.path(), "app").unwrap();
        assert_eq!(
            u,
            RunUser {
                uid: 1000,
                gid: 1001,
                groups: vec![10, 29],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn explicit_group_drops_supplementary_groups() {
        let r = root();
        let u = resolve_user(r.path(), "app:wheel").unwrap();
        assert_eq!((u.uid, u.gid, u.groups.len()), (1000, 10, 0));
        let u = resolve_user(r.path(), "1000:77").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 77));
    }

    #[test]
    fn unknown_numeric_uid_runs_with_gid_0() {
        let r = root();
        let u = resolve_user(r.path(), "4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
    }

    #[test]
    fn unknown_names_are_errors() {
        let r = root();
        let e = resolve_user(r.path(), "nobody").unwrap_err().to_string();
        assert!(e.contains("unable to find user nobody"), "{e}");
        let e = resolve_user(r.path(), "app:nogroup")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unable to find group nogroup"), "{e}");
        assert!(resolve_user(r.path(), ":x").is_err());
        assert!(resolve_user(r.path(), "app:").is_err());
    }

    #[test]
    fn chown_follows_buildkit() {
        let r = root();
        assert_eq!(resolve_chown(r.path(), "app").unwrap(), (1000, 1001));
        assert_eq!(resolve_chown(r.path(), "55").unwrap(), (55, 55));
        assert_eq!(resolve_chown(r.path(), "app:wheel").unwrap(), (1000, 10));
        assert_eq!(resolve_chown(r.path(), "7:appgrp").unwrap(), (7, 1001));
    }

    #[test]
    fn passwd_symlink_out_of_root_stays_inside() {
        let r = root();
        std::fs::remove_file(r.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.path().join("etc/passwd")).unwrap();
        // "/etc/passwd" resolves inside the root, to the symlink itself: a loop
        // back to the same name, so no host file is ever read.
        let e = resolve_user(r.path(), "root");
        assert!(e.is_err());
    }
}
